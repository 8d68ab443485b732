"""The project's own files agree with each other: the licence text, the citation metadata, the
changelog and the one version number (aecore.__version__, which the package metadata reads).
"""

import importlib.metadata
import json
import re
import tomllib
import urllib.parse
from pathlib import Path

import pytest
import yaml

import aecore

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_the_complete_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    sections = re.findall(r"^\s+(\d)\. ([A-Z][A-Za-z ]+)\.", text, flags=re.M)
    assert [int(n) for n, _ in sections] == list(range(1, 10)), sections
    assert sections[-1][1] == "Accepting Warranty or Additional Liability"
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
    assert _pyproject()["project"]["license"] == "Apache-2.0"


def test_citation_cff_parses_and_matches_the_package():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    # the keys CFF 1.2.0 requires, and the ones this project promises
    assert cff["cff-version"] == "1.2.0"
    assert cff["message"] and cff["title"].startswith("aecore:")
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    assert cff["type"] == "software" and cff["abstract"].strip()
    assert str(cff["version"]) == aecore.__version__
    assert cff["license"] == _pyproject()["project"]["license"]
    # its release date is the changelog's date for this version
    heading = f"## [{aecore.__version__}] - {cff['date-released'].isoformat()}"
    assert heading in (REPO / "CHANGELOG.md").read_text().splitlines()


def test_changelog_keeps_a_changelog_layout():
    lines = (REPO / "CHANGELOG.md").read_text().splitlines()
    releases = [ln for ln in lines if ln.startswith("## ")]
    assert releases[0] == "## [Unreleased]", releases
    pattern = re.compile(r"## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$")
    versions = [pattern.fullmatch(ln) for ln in releases[1:]]
    assert all(versions), releases
    assert versions[0].group(1) == aecore.__version__  # the newest release is this version
    dates = [m.group(2) for m in versions]
    assert dates == sorted(dates, reverse=True)  # newest first
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    assert {ln[4:] for ln in lines if ln.startswith("### ")} <= kinds


def test_version_is_written_once():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "aecore.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", aecore.__version__)
    assert project["tool"]["setuptools"]["package-data"]["aecore"] == ["py.typed"]
    assert (REPO / "aecore" / "py.typed").is_file()


def _installed_source() -> Path:
    """Where the installed `aecore` distribution came from: the folder of an editable or local
    install (direct_url.json), else the folder its files were installed into."""
    dist = importlib.metadata.distribution("aecore")
    direct = dist.read_text("direct_url.json")
    url = json.loads(direct)["url"] if direct else ""
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(url.removeprefix("file://"))).resolve()
    return Path(dist.locate_file("")).resolve()


def test_installed_metadata_has_the_package_version():
    source = _installed_source()
    package = Path(aecore.__file__).resolve().parent
    if not package.is_relative_to(source):
        pytest.skip(f"aecore is imported from {package}, not from the installed copy {source}")
    assert importlib.metadata.version("aecore") == aecore.__version__, (
        "the installed metadata is older than aecore/__init__.py: reinstall (pip install -e .)"
    )

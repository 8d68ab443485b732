"""README.md and docs/: every ```python block runs, README stays a front page, and the docs
hook's API check fails where a public name has no entry.

The site itself is built by the test command (`mkdocs build --strict`), which also executes the
notebooks; these tests check what the build does not: the pages' Python examples.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import pathlib
import re
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted(
    p for p in (REPO / "docs").rglob("*.md") if "hooks" not in p.relative_to(REPO / "docs").parts
)
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.M)


def expand_snippets(text: str) -> str:
    """Puts in what pymdownx.snippets puts in: `--8<-- "FILE"` or a `FILE:SECTION` between
    its `[start:SECTION]` and `[end:SECTION]` lines (paths from the repository root)."""

    def insert(match: re.Match) -> str:
        content = (REPO / match.group(1)).read_text(encoding="utf-8")
        if match.group(2):
            start, end = f"[start:{match.group(2)}]", f"[end:{match.group(2)}]"
            content = content.split(start, 1)[1].split("\n", 1)[1].split(end, 1)[0]
            content = content.rsplit("\n", 1)[0] + "\n"
        return content.rstrip("\n")

    return _SNIPPET.sub(insert, text)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, dedented, in order."""
    blocks = []
    for indent, body in _BLOCK.findall(text):
        blocks.append("".join(line[len(indent) :] for line in body.splitlines(keepends=True)))
    return blocks


def _ids(paths):
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n\n  ```python\n  y = x\n  ```\n```text\nz\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]
    included = expand_snippets('a\n--8<-- "README.md:ten-lines"\nb\n')
    assert (
        python_blocks(included)
        == python_blocks((REPO / "README.md").read_text(encoding="utf-8"))[:1]
    )


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_page_python_blocks_run_as_one_script(page):
    blocks = python_blocks(expand_snippets(page.read_text(encoding="utf-8")))
    if not blocks:
        pytest.skip("no python blocks")
    script = "\n".join(blocks)
    namespace = {"__name__": f"docs_{page.stem}"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(script, str(page), "exec"), namespace)  # noqa: S102 - the page's own code


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for marker in ("<!-- main-command -->", "<!-- test-command -->", "<!-- multihost-command -->"):
        assert marker in text, marker
    for command in ("main-command", "test-command"):
        block = text.split(f"<!-- {command} -->", 1)[1].split("```bash\n", 1)[1]
        assert block.startswith("python3 -m venv"), block[:40]
    assert "mkdocs build --strict" in text.split("<!-- test-command -->", 1)[1].split("```\n")[0]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_nothing_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text and "PERFORMANCE.md" not in text
    if page.name == "README.md":  # its links must work on a forge: files of the repository
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(REPO) and path.exists(), target


def _hook() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("docs_site_hook", REPO / "docs/hooks/site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_check_fails_without_an_entry():
    from mkdocs.exceptions import PluginError

    hook = _hook()
    pages = hook._api_pages()
    assert "::: aecore.jacobian.frobenius_sq\n" in pages["api/aecore.jacobian.md"]
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="api/aecore.jacobian.md"))
    rendered = "".join(f'<h2 id="{a}">' for a in hook._expected_ids["api/aecore.jacobian.md"])
    assert hook.on_page_content(rendered, page, None, None) == rendered
    missing = rendered.replace('id="aecore.jacobian.explain"', "")
    with pytest.raises(PluginError, match="aecore.jacobian.explain"):
        hook.on_page_content(missing, page, None, None)


def test_every_public_module_has_an_api_page(monkeypatch):
    from mkdocs.exceptions import PluginError

    hook = _hook()
    hook._check_every_module_listed()
    monkeypatch.setattr(
        hook, "API_MODULES", tuple(m for m in hook.API_MODULES if m != "aecore.stats")
    )
    with pytest.raises(PluginError, match="aecore.stats"):
        hook._check_every_module_listed()


def test_a_failing_notebook_fails_the_build(tmp_path):
    import asyncio

    import nbformat
    from mkdocs.exceptions import PluginError

    hook = _hook()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("x / 0")]
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(PluginError, match="broken.ipynb failed:(.|\n)*ZeroDivisionError"):
        asyncio.run(hook._execute_notebooks([path], tmp_path / "executed"))
    nb.cells = nb.cells[:1]
    nbformat.write(nb, path)
    asyncio.run(hook._execute_notebooks([path], tmp_path / "executed-ok"))
    assert (
        nbformat.read(tmp_path / "executed-ok" / "broken.ipynb", as_version=4).cells[0].source
        == "x = 1"
    )

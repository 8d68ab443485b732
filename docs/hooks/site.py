"""MkDocs hook that builds the generated parts of the documentation site.

At build time it adds the API reference (one page per public module, one entry per public name),
the notebooks (executed by mkdocs-jupyter), experiments/README.md with its figures, and the
benchmark figures drawn from benchmarks/results/*.json; it fails the build when a public name has
no rendered entry or a page loads anything from outside the site.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import json
import logging
import os
import pathlib
import pkgutil
import posixpath
import re
import shutil
import sys
import tempfile
import threading
import time

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

REPO = pathlib.Path(__file__).resolve().parents[2]

# Modules with an API page; every public module of the package must be here (checked).
API_MODULES = (
    "aecore",
    "aecore.models",
    "aecore.objective",
    "aecore.regularizers",
    "aecore.losses",
    "aecore.jacobian",
    "aecore.train",
    "aecore.data",
    "aecore.evaluate",
    "aecore.plots",
    "aecore.filters",
    "aecore.stats",
    "aecore.checkpoint",
    "aecore.distributed",
    "aecore.run",
    "aecore.configs",
)
# Public modules deliberately without an API page, and why.
NO_API_PAGE = {"aecore.cli": "the `aecore` command: documented in guide/command-line.md"}

# Repository files shown as pages of the site (repository path -> page path).
SINGLE_SOURCED = {
    "experiments/README.md": "experiments/index.md",
    "benchmarks/README.md": "benchmarks/details.md",
    "notebooks/README.md": "notebooks/index.md",
    "CHANGELOG.md": "changelog.md",
}
# Shown, and put in the navigation, when the repository has them.
OPTIONAL_PAGES = {"CONTRIBUTING.md": ("Contributing", "contributing.md")}
NOTEBOOK_WORKERS = 2  # notebooks executed at once (each kernel compiles on about one core)
NOTEBOOK_CELL_TIMEOUT_S = 300  # one cell; a quick notebook takes seconds, this stops a hang
BENCHMARK_MARKER = "<!-- benchmark-figures -->"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_EXTERNAL_LOAD = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""")
log = logging.getLogger("mkdocs.hooks.site")
_notebook_runs: list[list] = []  # [thread, errors] of the notebooks' execution
_executed_dirs: list[pathlib.Path] = []  # removed after the build
_origins: dict[str, str] = {}  # page path -> repository path of its source
_expected_ids: dict[str, list[str]] = {}  # API page path -> the anchors it must render


def public_names(module) -> list[str]:
    """A module's public names: its `__all__`, else the functions and classes it defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def _check_every_module_listed() -> None:
    import aecore

    found = {f"aecore.{m.name}" for m in pkgutil.iter_modules(aecore.__path__)}
    missing = sorted(
        m
        for m in found - set(API_MODULES) - set(NO_API_PAGE)
        if not m.rsplit(".", 1)[1].startswith("_")
    )
    if missing:
        raise PluginError(
            f"public modules without an API page (add them to API_MODULES): {missing}"
        )


def _canonical(name: str, value, pages: dict[str, list[str]]) -> str | None:
    """The documented module (other than aecore itself) whose public `name` is `value`."""
    for mod, names in pages.items():
        if (
            mod != "aecore"
            and name in names
            and getattr(importlib.import_module(mod), name) is value
        ):
            return mod
    return None


def _api_pages() -> dict[str, str]:
    """Markdown of each API page, keyed by page path; records the anchors each must render."""
    pages = {m: public_names(importlib.import_module(m)) for m in API_MODULES}
    out = {}
    for mod, names in pages.items():
        module = importlib.import_module(mod)
        lines = [f"# `{mod}`", "", f"::: {mod}", "    options:", "      members: false",
                 "      show_root_heading: false", ""]  # fmt: skip
        expected = []
        for name in names:
            value = getattr(module, name)
            if inspect.ismodule(value):
                lines.append(f"- `{mod}.{name}`: [`{value.__name__}`]({value.__name__}.md)")
                continue
            home = _canonical(name, value, pages) if mod == "aecore" else None
            if home:
                lines.append(f"- `{mod}.{name}`: [`{home}.{name}`][{home}.{name}]")
            else:
                lines += ["", f"::: {mod}.{name}", ""]
                expected.append(f"{mod}.{name}")
        out[f"api/{mod}.md"] = "\n".join(lines) + "\n"
        _expected_ids[f"api/{mod}.md"] = expected
    index = ["# API reference", "",
             "Generated at build time from each module's `__all__` (or, where a module has none, "
             "the functions and classes it defines); the build fails when a public name has no "
             "entry.", "", "| module | public names |", "|---|---:|"]  # fmt: skip
    index += [f"| [`{m}`]({m}.md) | {len(pages[m])} |" for m in API_MODULES]
    out["api/index.md"] = "\n".join(index) + "\n"
    return out


def on_config(config):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    _check_every_module_listed()
    nav = config["nav"]
    for repo_path, (title, page) in OPTIONAL_PAGES.items():
        if (REPO / repo_path).is_file():
            SINGLE_SOURCED[repo_path] = page
            nav.insert(len(nav) - 1, {title: page})
    for i, entry in enumerate(nav):
        if entry == {"API reference": "api/index.md"}:
            nav[i] = {"API reference": ["api/index.md"] + [f"api/{m}.md" for m in API_MODULES]}
    return config


def _add(files: Files, file: File) -> None:
    old = files.get_file_from_path(file.src_uri)
    if old is not None:
        files.remove(old)
    files.append(file)


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks up the notebooks
def on_files(files: Files, config) -> Files:
    for path, content in _api_pages().items():
        _add(files, File.generated(config, path, content=content))
    for repo_path, page in SINGLE_SOURCED.items():
        text = (REPO / repo_path).read_text(encoding="utf-8")
        _add(files, File.generated(config, page, content=text))
        _origins[page] = repo_path
    for path in sorted(REPO.glob("experiments/figures/**/*")):
        if path.is_file():
            rel = path.relative_to(REPO).as_posix()
            _add(files, File(rel, str(REPO), config["site_dir"], config["use_directory_urls"]))
    executed = pathlib.Path(tempfile.mkdtemp(prefix="aecore-notebooks-"))
    _executed_dirs.append(executed)
    notebooks = sorted(REPO.glob("notebooks/*.ipynb"))
    _notebook_runs.append(_start(_execute_notebooks(notebooks, executed / "notebooks")))
    for path in notebooks:  # their executed copies, written while the other pages build
        rel = f"notebooks/{path.name}"
        _add(files, File(rel, str(executed), config["site_dir"], config["use_directory_urls"]))
    for path, png in _benchmark_figures().items():
        _add(files, File.generated(config, path, content=png))
    return files


async def _execute_notebooks(paths: list[pathlib.Path], out_dir: pathlib.Path) -> None:
    """Runs each notebook top to bottom in a "python3" kernel (this interpreter, checked), two
    at a time, and writes the executed copies (outputs and figures) for mkdocs-jupyter to render.

    This is the one place the notebooks are executed in the test command: a failing cell fails
    the build with its traceback.
    """
    import nbclient
    import nbformat

    out_dir.mkdir(parents=True)
    slots = asyncio.Semaphore(NOTEBOOK_WORKERS)
    # Quick settings unless the caller chose (AECORE_NOTEBOOK_QUICK=0: the full runs), the
    # repository's aecore and experiments, and ipykernel's inline figures (not a headless backend
    # the caller may have set, which would drop every figure from the pages).
    env = dict(os.environ)
    env.setdefault("AECORE_NOTEBOOK_QUICK", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("MPLBACKEND", None)
    if env["AECORE_NOTEBOOK_QUICK"] == "1":
        # As in the tests (tests/conftest.py): quick runs are compile-bound, so XLA:CPU skips
        # its LLVM optimisation passes (same IEEE arithmetic), and the kernels share one
        # compilation cache for this build.
        if "--xla_backend_optimization_level" not in env.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
            ).strip()
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out_dir.parent / "jax-cache"))
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

    async def run(path: pathlib.Path) -> None:
        nb = nbformat.read(path, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=NOTEBOOK_CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(path.parent)}},
        )  # fmt: skip
        async with slots:
            try:
                await client.async_execute(env=env)
            except nbclient.exceptions.CellExecutionError as error:
                raise PluginError(f"notebook {path.name} failed:\n{error}") from None
        ran = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
        if ran != sys.executable:
            raise PluginError(
                f"{path.name}: kernel ran {ran!r}, not this interpreter {sys.executable}"
            )
        del nb.cells[0]
        nbformat.write(nb, out_dir / path.name)

    await asyncio.gather(*(run(path) for path in paths))


def _start(coroutine) -> list:
    """Runs `coroutine` in a thread (the kernels compile while MkDocs builds the other pages);
    returns [thread, errors]."""
    errors: list[BaseException] = []

    def run() -> None:
        started = time.monotonic()
        try:
            asyncio.run(coroutine)
        except BaseException as error:  # noqa: BLE001 - re-raised in the build's own thread
            errors.append(error)
        log.info(f"notebooks executed in {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=run, name="aecore-notebooks", daemon=True)
    thread.start()
    return [thread, errors]


@event_priority(100)  # before mkdocs-jupyter reads the executed copy
def on_pre_page(page, config, files):
    if page.file.src_uri.endswith(".ipynb"):
        for thread, errors in _notebook_runs:
            thread.join()
            if errors:
                raise errors[0]
    return page


def _site_path(repo_path: str) -> str | None:
    if repo_path in SINGLE_SOURCED:
        return SINGLE_SOURCED[repo_path]
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/") :]
    if (
        repo_path.startswith("notebooks/") and repo_path.endswith(".ipynb")
    ) or repo_path.startswith("experiments/figures/"):
        return repo_path
    return None


def _relink(match: re.Match, origin: str, page: str) -> str:
    bang, text, target = match.groups()
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
        return match.group(0)
    path, _, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(origin), path))
    site = _site_path(repo_path)
    if site is None:  # a repository file that is not part of the site: name it
        return f"{text} (`{repo_path}`)" if text and not bang else f"`{repo_path}`"
    link = posixpath.relpath(site, posixpath.dirname(page)) + (f"#{anchor}" if anchor else "")
    return f"{bang}[{text}]({link})"


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    if src in _origins:
        markdown = _LINK.sub(lambda m: _relink(m, _origins[src], src), markdown)
    if BENCHMARK_MARKER in markdown:
        lines = []
        for path, title in _benchmark_titles.items():
            lines += [f"![{title}]({posixpath.relpath(path, posixpath.dirname(src))})", ""]
        markdown = markdown.replace(BENCHMARK_MARKER, "\n".join(lines))
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri.endswith(".ipynb"):
        # nbconvert's template loads MathJax from a URL; the site typesets with its own KaTeX.
        html = re.sub(
            r'<script src="[^"]*">\s*</script>\s*<!-- MathJax configuration -->', "", html
        )
        html = re.sub(r'<script type="text/x-mathjax-config">.*?</script>', "", html, flags=re.S)
    for anchor in _expected_ids.get(page.file.src_uri, []):
        if f'id="{anchor}"' not in html:
            raise PluginError(f"{page.file.src_uri}: no API entry rendered for {anchor}")
    return html


def on_post_page(output: str, page, config) -> str:
    match = _EXTERNAL_LOAD.search(output)
    if match:
        raise PluginError(f"{page.file.src_uri} loads from outside the site: {match.group(0)}")
    return output


def on_post_build(config) -> None:
    _notebook_runs.clear()
    while _executed_dirs:
        shutil.rmtree(_executed_dirs.pop(), ignore_errors=True)


# --- benchmark figures, drawn from the results files -------------------------------------------

_benchmark_titles: dict[str, str] = {}


def _benchmark_figures() -> dict[str, bytes]:
    """One PNG per benchmarks/results/*.json: ms per train step for each model and route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        meta, records = result["meta"], result["records"] + result.get("sweep", [])
        # a row skipped for its memory budget has no time
        records = [r for r in records if r.get("ms_per_step") is not None]
        models = list(dict.fromkeys(r["model"] for r in records))
        routes = list(dict.fromkeys(r["route"] for r in records))
        fig, ax = plt.subplots(
            figsize=(9, 0.28 * len(models) * max(1, len(routes) / 3) + 2.2), layout="constrained"
        )
        height = 0.8 / len(routes)
        # tab20 where tab10 would repeat a colour: one colour per route
        colors = plt.get_cmap("tab20" if len(routes) > 10 else "tab10")
        for j, route in enumerate(routes):
            ys, xs = [], []
            for i, model in enumerate(models):
                ms = [
                    r["ms_per_step"] for r in records if r["model"] == model and r["route"] == route
                ]
                if ms:
                    ys.append(i + (j - len(routes) / 2 + 0.5) * height)
                    xs.append(min(ms))
            ax.barh(ys, xs, height=height, label=route, color=colors(j % colors.N))
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per train step (median; log scale)")
        title = (
            f"{path.name}: {meta['machine']}"
            + (f" ({meta['cpus']} CPUs)" if "cpus" in meta else "")
            + f", {meta['date']}, jax {meta['jax']}"
            + (
                f", matmul peak {meta['matmul_peak_gflops']:.0f} GFLOP/s"
                if "matmul_peak_gflops" in meta
                else ""
            )
            + (" (quick)" if meta.get("quick") else "")
        )
        ax.set_title(title, fontsize=9)
        fig.legend(fontsize=7, ncol=5, loc="outside lower center")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        figures[f"benchmarks/figures/{path.stem}.png"] = buf.getvalue()
        _benchmark_titles[f"benchmarks/figures/{path.stem}.png"] = title
    return figures

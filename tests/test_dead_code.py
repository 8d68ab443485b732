"""STYLE.md rule 13 as tests: no dead code (vulture), and functions short enough to read at once."""

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80  # lines of code: docstrings, comments and blank lines not counted


def test_vulture_finds_no_dead_code():
    paths = [
        "aecore",
        "tests",
        "experiments",
        "benchmarks",
        "docs/hooks",
        "tests/vulture_whitelist.py",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "vulture", *paths], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def code_lines(source: str) -> dict[str, int]:
    """`name (line)` -> lines of code of every function in `source` (nested ones included in
    their parent's count too): lines holding a token other than a comment or a docstring."""
    tree = ast.parse(source)
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            code.update(range(tok.start[0], tok.end[0] + 1))
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        doc = node.body[0] if isinstance(node, scopes) and node.body else None
        if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            if isinstance(doc.value.value, str):
                code.difference_update(range(doc.lineno, doc.end_lineno + 1))
    return {
        f"{node.name} (line {node.lineno})": len(
            code & set(range(node.lineno, node.end_lineno + 1))
        )
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    source = (
        'def f(x):\n    """Doc\n    string."""\n    # why\n\n    y = (x +\n         1)\n'
        "    return y\n"
    )
    assert code_lines(source) == {"f (line 1)": 4}


def test_no_function_in_aecore_is_longer_than_80_lines_of_code():
    too_long = []
    for path in sorted((REPO / "aecore").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for name, n in code_lines(path.read_text()).items():
            if n > MAX_FUNCTION_LINES:
                too_long.append(f"{rel}: {name} has {n} lines of code")
    assert not too_long, "\n".join(too_long)


def test_fit_reads_at_once():
    source = (REPO / "aecore" / "train" / "loop.py").read_text()
    (fit,) = [n for name, n in code_lines(source).items() if name.startswith("fit ")]
    assert fit <= 60, fit

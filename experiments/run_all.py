"""Runs every experiment module `experiments/exp_*.py` (found with pkgutil, so new ones join
automatically) and prints a summary table; exits non-zero if any experiment failed: raised, or
recorded a check (in its metrics.json) that did not pass.

Command:  python -m experiments.run_all [--quick] [--out ROOT] [--only NAME ...] [--data D]
Expected: every row "ok" (every check of every experiment passed). Runtime: --quick about
  3-5 min on 2 CPU cores; default runs about 30 min (see experiments/README.md for each).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import experiments
from experiments import common


def discover() -> list[str]:
    """Names (without the exp_ prefix) of the experiment modules, sorted."""
    return sorted(
        m.name.removeprefix("exp_")
        for m in pkgutil.iter_modules(experiments.__path__)
        if m.name.startswith("exp_") and not m.ispkg
    )


def run_one(name: str, argv: list[str]) -> tuple[bool, float, str]:
    """Imports experiments.exp_<name> and calls its main(argv): (ok, seconds, error line).

    A failed check raises `common.ChecksFailed` in the experiment's `finish`: not ok.
    """
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"experiments.exp_{name}")
        module.main(argv)
    except Exception as err:  # noqa: BLE001 - one failing experiment must not stop the rest
        traceback.print_exc()
        return False, time.perf_counter() - started, f"{type(err).__name__}: {err}"[:200]
    return True, time.perf_counter() - started, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=common.first_paragraph(__doc__))
    p.add_argument("--quick", action="store_true", help="pass --quick to every experiment")
    p.add_argument("--out", default=None, help="root folder (default: runs/experiments)")
    p.add_argument("--only", nargs="*", default=None, help="experiment names to run")
    p.add_argument("--data", default=None, help="pass --data to every experiment")
    args = p.parse_args(argv)
    root = Path(args.out) if args.out else common.REPO / "runs" / "experiments"
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"unknown experiments {unknown}; found {names}")
        names = [n for n in names if n in args.only]
    rows = []
    for name in names:
        sub = ["--out", str(root / name)]
        sub += ["--quick"] if args.quick else []
        sub += ["--data", args.data] if args.data else []
        print(f"=== {name}: {' '.join(sub)}", flush=True)
        rows.append((name, *run_one(name, sub)))
    print(f"\n{'experiment':<22} {'status':<7} {'seconds':>8}  error")
    for name, ok, seconds, error in rows:
        print(f"{name:<22} {'ok' if ok else 'FAILED':<7} {seconds:>8.1f}  {error}")
    failed = [name for name, ok, *_ in rows if not ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} ok" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared plumbing of the experiment scripts: command-line flags, data choice, training a model
from plain keyword arguments, and writing results.json. No experiment logic lives here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aecore import Objective, make_autoencoder
from aecore.data import Dataset, load_dataset
from aecore.train import FitResult, TrainConfig, fit

REPO = Path(__file__).resolve().parents[1]
# 10,000 real MNIST digits kept beside the checkout for offline development (see its README).
# Experiments may use it when present; the library never depends on it.
MNIST_10K = Path(os.environ.get("AECORE_MNIST_10K", REPO.parent / "shared/data/mnist_10k.npz"))


def parser(description: str, *, default_data: str = "digits") -> argparse.ArgumentParser:
    """The flags every experiment takes: --quick, --out, --data, --data-dir, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings for tests (seconds)")
    p.add_argument("--out", default=None, help="output folder (default: runs/experiments/NAME)")
    p.add_argument(
        "--data",
        default=default_data,
        help="dataset: 'digits' (offline default), 'mnist10k' (../shared/data/mnist_10k.npz), "
        "a TFDS name (mnist, fashion_mnist, cifar10_bw; needs --data-dir with prepared data) "
        "or a .npy/.npz/.csv path",
    )
    p.add_argument("--data-dir", default=None, help="TFDS data_dir for TFDS datasets")
    p.add_argument("--seed", type=int, default=0)
    return p


def out_dir(name: str, out: str | None) -> Path:
    path = Path(out) if out else REPO / "runs" / "experiments" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def mnist_10k_available() -> bool:
    return MNIST_10K.is_file()


def mnist_10k_or_digits() -> str:
    """The default --data of the experiments that want real digits: 'mnist10k' where present."""
    return "mnist10k" if mnist_10k_available() else "digits"


def load_data(
    data: str, *, data_dir: str | None = None, seed: int = 0, max_examples: int | None = None
) -> Dataset:
    """`load_dataset`, plus the name 'mnist10k' for the offline 10k-digit MNIST subset."""
    if data == "mnist10k":
        if not mnist_10k_available():
            raise FileNotFoundError(
                f"mnist10k needs {MNIST_10K} (or set AECORE_MNIST_10K); use --data digits "
                "offline or --data mnist with a prepared TFDS --data-dir"
            )
        data = str(MNIST_10K)
    return load_dataset(data, data_dir=data_dir, seed=seed, max_examples=max_examples)


def flat(x: np.ndarray) -> np.ndarray:
    """[N, *shape] -> [N, prod(shape)]."""
    return x.reshape(x.shape[0], -1)


def train_model(
    x_train: np.ndarray,
    *,
    model: dict[str, Any],
    objective: Objective,
    train: dict[str, Any],
    seed: int = 0,
) -> FitResult:
    """Builds `make_autoencoder(input_shape, **model)` and fits it; progress bar off."""
    net = make_autoencoder(x_train.shape[1:], key=seed, **model)
    config = TrainConfig(seed=seed, progress=False, **train)
    return fit(net, objective, x_train, config=config)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every experiment's `run` starts from."""

    started: float  # time.perf_counter() at the start, for results.json's wall time
    out: Path  # output folder (exists)
    ds: Dataset  # the --data dataset as loaded
    x_train: np.ndarray  # [N, prod(input_shape)]
    x_test: np.ndarray  # [M, prod(input_shape)]


def setup(name: str, args: argparse.Namespace, *, labelled: bool = False) -> Setup:
    """Starts the clock, makes the output folder, loads --data and flattens its inputs.

    Raises:
      ValueError: `labelled` and the dataset has no labels.
    """
    started = time.perf_counter()
    out = out_dir(name, args.out)
    ds = load_data(args.data, data_dir=args.data_dir, seed=args.seed)
    if labelled and ds.y_train is None:
        raise ValueError(f"exp_{name} needs labelled data, got {args.data!r} without labels")
    return Setup(started, out, ds, flat(ds.x_train), flat(ds.x_test))


def finish(
    name: str,
    s: Setup,
    args: argparse.Namespace,
    fields: dict[str, Any],
    *,
    checks: dict[str, bool],
    strict: bool = False,
) -> dict[str, Any]:
    """Writes results.json: the dataset description, the --quick flag, `fields` and `checks`.

    With `strict`, raises RuntimeError naming the failed checks (after writing, so the results
    stay on disk for inspection).
    """
    results = write_results(
        s.out,
        {"data": s.ds.description, "quick": bool(args.quick), **fields, "checks": checks},
        started=s.started,
    )
    failed = [k for k, ok in checks.items() if not ok]
    if strict and failed:
        raise RuntimeError(f"exp_{name} checks failed: {failed} (results in {s.out})")
    return results


def first_paragraph(doc: str) -> str:
    """A module docstring's first paragraph on one line: the `--help` description."""
    return " ".join(doc.split("\n\n")[0].split())


def main_for(
    run: Callable[[argparse.Namespace], dict[str, Any]],
    doc: str,
    *,
    default_data: str = "digits",
) -> Callable[[list[str] | None], dict[str, Any]]:
    """An experiment's `main(argv)`: parses the common flags (description: `doc`'s first
    paragraph) and returns `run(args)`."""
    description = first_paragraph(doc)

    def main(argv: list[str] | None = None) -> dict[str, Any]:
        return run(parser(description, default_data=default_data).parse_args(argv))

    return main


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_results(path: Path, results: dict[str, Any], *, started: float) -> dict[str, Any]:
    """Writes results.json (with wall time) into `path` and prints a short summary."""
    results = {**to_jsonable(results), "wall_time_s": round(time.perf_counter() - started, 2)}
    (path / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))
    print(f"results and figures in {path}")
    return results


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, *, dpi: int = 100, tight: bool = True, **savefig: Any) -> None:
    """Lays out (optionally), writes (`savefig` kwargs passed on) and closes a figure."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, **savefig)
    fig.clf()
    pyplot().close(fig)

"""Shared plumbing of the experiment scripts: flags, data choice, config records trained through
`aecore.run` (the path of `aecore train`), check records and the run's metrics.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aecore import Objective, configs
from aecore import run as aerun
from aecore import train as aetrain
from aecore.data import Dataset, load_dataset
from aecore.models import ModelSpec
from aecore.train.rundir import METRICS_FILE, RunDir

REPO = Path(__file__).resolve().parents[1]
# 10,000 real MNIST digits in the repository, so the experiments run offline from a clone
# (provenance and licences: experiments/data/README.md); AECORE_MNIST_10K points elsewhere.
# Experiments use it; the library never depends on it.
MNIST_10K = Path(os.environ.get("AECORE_MNIST_10K", REPO / "experiments/data/mnist_10k.npz"))


def parser(description: str, *, default_data: str = "digits") -> argparse.ArgumentParser:
    """The flags every experiment takes: --quick, --out, --data, --data-dir, --seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings for tests (seconds)")
    p.add_argument("--out", default=None, help="output folder (default: runs/experiments/NAME)")
    p.add_argument(
        "--data",
        default=None,
        help=f"dataset (default: {default_data!r}; with --quick always 'digits', the setting "
        "the quick checks are stated for): 'digits' (offline), 'mnist10k' "
        "(experiments/data/mnist_10k.npz), a TFDS name (mnist, fashion_mnist, cifar10_bw; needs "
        "--data-dir with prepared data) or a .npy/.npz/.csv path",
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


def record(
    *,
    model: dict[str, Any],
    objective: Objective | dict[str, Any],
    train: dict[str, Any],
    data: dict[str, Any] | None = None,
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """One run of an experiment as a config record: the sections of `aecore.configs`, starting
    from the LIBRARY's defaults (`ModelSpec`, `Objective`, `TrainConfig`), with these fields set.

    `objective` may be an `Objective` (its fields are copied). The progress bar is off and
    `train.seed` is `seed`. Unknown fields raise (the record is locked like any config).
    """
    c = configs.base_config(defaults={})
    if isinstance(objective, Objective):
        objective = {
            f.name: getattr(objective, f.name)
            for f in dataclasses.fields(objective)
            if f"objective.{f.name}" not in configs.NOT_CONFIGURABLE
        }
    c.lock()
    sections = {"model": model, "objective": objective, "train": train, "data": data or {}}
    with c.ignore_type():  # e.g. an int learning rate, a list of widths: the dataclass checks
        for section, values in sections.items():
            for key, value in values.items():
                c[section][key] = tuple(value) if isinstance(value, list) else value
    c.train.seed = seed
    c.train.progress = False
    return c


# The overcomplete copier of exp_overcomplete and exp_weight_decay_tied: sigmoid codes, linear
# decoder, squared error; the noise of the noisy-input ratio.
COPIER_NOISE_SIGMA = 0.2


def copier_record(objective: Objective, *, tied: bool, hidden: int, quick: bool, seed: int):
    """The config record of the overcomplete copier with `objective` (500 quick steps)."""
    return record(
        model=dict(hidden=(hidden,), activation="sigmoid", output="identity", tied=tied),
        objective=objective,
        train=dict(
            num_steps=500 if quick else 4000, batch_size=128, learning_rate=1e-2, log_every=100
        ),
        seed=seed,
    )


def copier_width(quick: bool) -> int:
    return 128 if quick else 256


def plot_bars(path, table: dict[str, dict[str, float]], keys: tuple[str, ...]) -> None:
    """One bar panel per measure in `keys`, one bar per variant (the first, the baseline, red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    titles = {
        "train_error": "train error (Σ pixels)",
        "test_error": "test error (Σ pixels)",
        "identity_distance": "‖J x̂ − I‖²_F / d  (0 = copier)",
        "noise_ratio": "noisy-input ratio (1 = noise copied)",
        "weight_norm": "Σ‖W‖_F",
    }
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.4))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        ax.bar(range(len(names)), [table[n][key] for n in names], color="C0")
        ax.bar([0], [table[names[0]][key]], color="C3")
        if key == "noise_ratio":
            ax.axhline(1.0, c="k", ls="--", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(titles.get(key, key), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained record: the model, its fit history, its metrics (as in its metrics.json)."""

    model: Any
    history: list[dict]
    metrics: dict[str, Any]
    workdir: Path


def dataset(
    name: str,
    x_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Dataset:
    """Arrays as an `aecore.data.Dataset` (no test split given: the training data stands in)."""
    x_test = x_train if x_test is None else x_test
    if y_train is not None and y_test is None:
        y_test = y_train if x_test is x_train else None
    y_train = None if y_test is None else y_train
    unit = (
        float(min(x_train.min(), x_test.min())) >= 0
        and float(max(x_train.max(), x_test.max())) <= 1
    )
    return Dataset(
        name,
        np.asarray(x_train, np.float32),
        np.asarray(x_test, np.float32),
        y_train,
        y_test,
        "unit" if unit else "real",
        f"{name}: {len(x_train)} train / {len(x_test)} test examples of {x_train.shape[1:]}",
    )


def fit_record(
    s: Setup,
    name: str,
    x_train: np.ndarray,
    x_test: np.ndarray | None = None,
    *,
    model: dict[str, Any],
    objective: Objective | dict[str, Any],
    train: dict[str, Any],
    seed: int = 0,
) -> Trained:
    """`train_record` of `record(model=, objective=, train=, seed=)` on arrays [N, ...]."""
    config = record(model=model, objective=objective, train=train, seed=seed)
    return train_record(s, name, config, dataset(name, x_train, x_test))


def trainer(
    spec: dict[str, Any],
    objective: Objective,
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    lr_schedule: str = "constant",
) -> Callable[..., Any]:
    """`train(x [N, ...], seed, num_steps=None) -> (model, seconds per step)`:
    `aecore.models.ModelSpec(**spec)` trained in memory for `num_steps` Adam steps (or the
    call's own count; a cosine schedule keeps the trainer's length) of ONE jitted
    `aecore.train.make_train_step`, shared by every call (seeds compile once), with `fit`'s
    batches (`batch_at`) and keys (`fold_in(key, t)`). The seconds are those of the step loop
    (the model's build excluded; the first call's include the compilation).

    For sweeps of many seeds per objective where `train_record`'s run directory, evaluation and
    per-run compilation would cost more than the training, and for equal-wall-clock budgets;
    it also takes objectives a config record cannot hold (`Objective(extra_terms=...)`).

    Raises:
      FloatingPointError: the loss or a gradient became non-finite (checked at the end).
    """
    config = aetrain.TrainConfig(
        num_steps=num_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
    )
    optimizer = aetrain.make_optimizer(config)
    step = aetrain.make_train_step(objective, optimizer, donate=False)

    def train(x: np.ndarray, seed: int, num_steps: int = num_steps) -> tuple[Any, float]:
        model = ModelSpec(**spec).build(x.shape[1:], key=seed)
        opt_state, key = aetrain.init_optimizer(optimizer, model), jax.random.key(seed)
        finite, started = True, time.perf_counter()
        for t in range(num_steps):
            xb = jnp.asarray(aetrain.batch_at(x, t, batch_size=batch_size, seed=seed))
            model, opt_state, metrics = step(model, opt_state, xb, jax.random.fold_in(key, t))
            finite = finite & metrics["finite"]
        if not bool(finite):  # waits for the last step
            raise FloatingPointError(f"training {spec} with {objective.describe()} diverged")
        return model, (time.perf_counter() - started) / num_steps

    return train


def patch_filters(
    s: Setup,
    name: str,
    objective: Objective,
    *,
    hidden: int,
    train: dict[str, Any],
    quick: bool,
    seed: int,
) -> tuple[Dataset, Trained, np.ndarray, np.ndarray]:
    """Trains `hidden` sigmoid codes with a sigmoid decoder on 8×8 natural-image patches (the
    record of exp_sparse's and exp_denoising's patch filters).

    Returns:
      (patch dataset, the trained record, first-layer filters [64, hidden], top-25 PCA
      components [64, 25]).
    """
    from sklearn.decomposition import PCA

    ds = load_dataset("patches", num_patches=1000 if quick else 10000, seed=seed)
    trained = fit_record(
        s,
        name,
        ds.x_train,
        ds.x_test,
        model=dict(hidden=(hidden,), activation="sigmoid", output="sigmoid"),
        objective=objective,
        train=train,
        seed=seed,
    )
    kernel = np.asarray(trained.model.encoder.layers[0].kernel[...])  # [64, hidden]
    pca = PCA(n_components=25).fit(flat(ds.x_train)).components_.T  # [64, 25]
    return ds, trained, kernel, pca


def train_record(s: Setup, name: str, config: ml_collections.ConfigDict, data: Dataset) -> Trained:
    """Trains `config` on `data` through `aecore.run` (prepare, train, evaluate: the path of
    `aecore train`) in s.out/runs/<name>: config.json, data.json, checkpoints, metrics.jsonl,
    metrics.json. A run found there is replaced (an experiment always trains afresh).
    """
    workdir = s.out / "runs" / name.replace(" ", "_").replace("/", "_")
    if workdir.is_dir():
        RunDir(workdir).remove_run()
    prepared = aerun.prepare(aerun.RunConfig.of(config), workdir, dataset=data)
    result, metrics = aerun.run_prepared(prepared, figures=False)
    return Trained(result.model, result.history, metrics, workdir)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every experiment's `run` starts from."""

    started: float  # time.perf_counter() at the start, for metrics.json's wall time
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


@dataclasses.dataclass(frozen=True)
class Check:
    """One claim of an experiment: its name, what is expected, what was measured, and whether the
    measurement meets the expectation. Written to metrics.json; one that fails fails the run."""

    name: str
    expected: str
    measured: Any
    passed: bool


_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def check(name: str, measured: float, op: str, bound: float, *, why: str = "") -> Check:
    """`Check` of `measured OP bound`, e.g. check("noise_ratio", 0.93, ">", 0.9)."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {list(_OPS)}, got {op!r}")
    expected = f"{op} {bound:.6g}" + (f" ({why})" if why else "")
    return Check(name, expected, to_jsonable(measured), bool(_OPS[op](measured, bound)))


class ChecksFailed(RuntimeError):
    """An experiment's checks did not all pass (its metrics.json is on disk)."""


def finish(
    name: str, s: Setup, args: argparse.Namespace, fields: dict[str, Any], *, checks: list[Check]
) -> dict[str, Any]:
    """Writes metrics.json: the dataset description, the --quick flag, `fields` and `checks`
    (records name, expected, measured, passed). Every experiment states at least one check.

    Raises:
      ValueError: no check given.
      ChecksFailed: a check failed, naming each (after writing, so the results stay on disk).
    """
    if not checks:
        raise ValueError(f"exp_{name} states no check; every experiment checks its claim")
    results = write_results(
        s.out,
        {
            "data": s.ds.description,
            "quick": bool(args.quick),
            **fields,
            "checks": [dataclasses.asdict(c) for c in checks],
        },
        started=s.started,
    )
    for c in checks:
        print(f"{'pass' if c.passed else 'FAIL'}  {c.name}: {c.measured} (expected {c.expected})")
    failed = [f"{c.name} = {c.measured} (expected {c.expected})" for c in checks if not c.passed]
    if failed:
        raise ChecksFailed(f"exp_{name}: {len(failed)} check(s) failed: {'; '.join(failed)}")
    return results


def passed(results: dict[str, Any]) -> dict[str, bool]:
    """name -> passed, from the check records of a metrics.json."""
    return {c["name"]: c["passed"] for c in results["checks"]}


def first_paragraph(doc: str) -> str:
    """A module docstring's first paragraph on one line: the `--help` description."""
    return " ".join(doc.split("\n\n")[0].split())


def parse_args(
    p: argparse.ArgumentParser, argv: list[str] | None, *, default_data: str
) -> argparse.Namespace:
    """`p.parse_args(argv)` with --data resolved: `default_data`, or "digits" with --quick (the
    quick runs are sized, and their checks stated, for digits)."""
    args = p.parse_args(argv)
    if args.data is None:
        args.data = "digits" if args.quick else default_data
    return args


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
        p = parser(description, default_data=default_data)
        return run(parse_args(p, argv, default_data=default_data))

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
    """Writes metrics.json (with wall time) into `path` and prints a short summary."""
    results = {**to_jsonable(results), "wall_time_s": round(time.perf_counter() - started, 2)}
    (path / METRICS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))
    print(f"metrics and figures in {path}")
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

"""`train_and_evaluate(config, workdir)`: one experiment from a config to metrics and figures.

The ConfigDict is translated into plain keyword arguments and aecore dataclasses here, at the
boundary; aecore itself never sees ml_collections.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from aecore import evaluate, plots
from aecore.checkpoint import Checkpointer, CheckpointError
from aecore.data import Dataset, load_dataset, normalize
from aecore.models import make_autoencoder
from aecore.objective import Objective
from aecore.train import TrainConfig, fit, init_optimizer, make_optimizer

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"

# What `prepare` raises for bad input (config values, data, an incompatible or damaged
# checkpoint); the `aecore` command prints these as one line and exits with code 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, CheckpointError)


def as_dict(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """The config as plain nested dicts (JSON-serialisable; tuples become lists in JSON)."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    return json.loads(json.dumps(config))


def load_data(data: dict[str, Any], *, name: str | None = None) -> tuple[Dataset, dict[str, Any]]:
    """Loads and normalizes the dataset of a config's `data` section.

    Returns:
      (dataset with normalized inputs, normalization stats of `aecore.data.normalize`).
    """
    ds = load_dataset(
        name or data["name"],
        data_dir=data["data_dir"],
        test_fraction=data["test_fraction"],
        seed=data["seed"],
        max_examples=data["max_examples"],
    )
    x_train, x_test, stats = normalize(ds.x_train, ds.x_test, method=data["normalization"])
    lo, hi = float(min(x_train.min(), x_test.min())), float(max(x_train.max(), x_test.max()))
    value_range = "unit" if lo >= 0.0 and hi <= 1.0 else "real"
    ds = dataclasses.replace(ds, x_train=x_train, x_test=x_test, value_range=value_range)
    return ds, stats


def check_loss_fits_data(objective: Objective, ds: Dataset, output: str) -> None:
    """Cross-entropy needs targets in [0, 1] and a sigmoid decoder; say so before training."""
    if objective.loss != "cross_entropy":
        return
    if ds.value_range != "unit":
        lo = float(min(ds.x_train.min(), ds.x_test.min()))
        hi = float(max(ds.x_train.max(), ds.x_test.max()))
        raise ValueError(
            f"the cross-entropy loss needs data in [0, 1], but dataset {ds.name!r} holds values "
            f"in [{lo:g}, {hi:g}]; set data.normalization='unit', or use "
            "objective.loss='squared_error' with model.output='identity'"
        )
    if output != "sigmoid":
        raise ValueError(
            f"the cross-entropy loss needs model.output='sigmoid', got {output!r}; use "
            "objective.loss='squared_error' for an identity output"
        )


def build_model(cfg: dict[str, Any], input_shape: tuple[int, ...]):
    """`make_autoencoder` from a config's `model` section (initial weights from train.seed)."""
    m = cfg["model"]
    return make_autoencoder(
        input_shape,
        hidden=tuple(m["hidden"]),
        activation=m["activation"],
        output=m["output"],
        tied=m["tied"],
        architecture=m["architecture"],
        key=cfg["train"]["seed"],
    )


def objective_from(cfg: dict[str, Any]) -> Objective:
    return Objective(**cfg["objective"])


def train_config_from(cfg: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**cfg["train"])


def read_config(workdir: str) -> dict[str, Any]:
    """The experiment config of a run: stored with its checkpoint, else WORKDIR/config.json."""
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.isdir(ckpt_dir):
        with Checkpointer(ckpt_dir) as ckpt:
            if ckpt.latest_step() is not None:
                run = ckpt.read_meta().get("config", {}).get("run")
                if run:
                    return run
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir} holds neither a checkpoint nor {CONFIG_FILE}; train a model there first "
            "with `aecore train CONFIG --workdir DIR`"
        )
    with open(path) as f:
        return json.load(f)


def restore_model(workdir: str, cfg: dict[str, Any], input_shape: tuple[int, ...]):
    """The model of the latest checkpoint in WORKDIR/checkpoints, built from `cfg`."""
    template = build_model(cfg, input_shape)
    with Checkpointer(os.path.join(workdir, CHECKPOINT_DIR)) as ckpt:
        model, _, step, _ = ckpt.restore(template)
    return model, step


def evaluate_and_plot(
    model, ds: Dataset, cfg: dict[str, Any], workdir: str, *, history: list[dict] | None
) -> dict[str, Any]:
    """aecore.evaluate metrics of `model` on `ds`, and the figures, written into `workdir`."""
    objective = objective_from(cfg)
    max_examples = 500 if cfg["data"]["max_examples"] else 2000
    metrics = evaluate.evaluate_model(model, ds, objective, max_examples=max_examples)
    m = cfg["model"]
    if m["activation"] == "identity" and m["output"] == "identity" and m["architecture"] == "mlp":
        # A linear autoencoder with squared error should reach PCA's subspace and error.
        k = int(m["hidden"][-1])
        x_train = ds.x_train[:max_examples]
        metrics["pca_reconstruction_error"] = evaluate.pca_reconstruction_error(
            x_train, ds.x_test[:max_examples], k
        )
        metrics["max_pca_angle_rad"] = float(np.max(evaluate.pca_angles(model, x_train)))
    figures = {}
    x = ds.x_test[:10]
    figures["reconstructions"] = plots.save_reconstructions(
        os.path.join(workdir, "reconstructions.png"), x, evaluate.reconstruct(model, x)
    )
    if cfg["model"]["architecture"] == "mlp":
        kernel = np.asarray(model.encoder.layers[0].kernel[...])
        figures["filters"] = plots.save_filters(
            os.path.join(workdir, "filters.png"), kernel, image_shape=ds.input_shape, n=64
        )
    if history:
        figures["loss_curves"] = plots.save_loss_curves(
            os.path.join(workdir, "loss_curves.png"), history
        )
    metrics["figures"] = figures
    return metrics


def write_json(path: str, value: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated run: everything `train_and_evaluate` needs, built before any file is written."""

    cfg: dict[str, Any]
    ds: Dataset
    objective: Objective
    train_config: TrainConfig
    model: Any
    workdir: str


def check_resumable(workdir: str, model, train_config: TrainConfig) -> None:
    """Restores the latest checkpoint of `workdir` (if any) into `model`'s shapes, or raises.

    Raises:
      ValueError: the checkpoint holds a model or optimizer state of other shapes.
      CheckpointError: the checkpoint is truncated or corrupted.
    """
    ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir):  # nothing to resume; do not create the directory here
        return
    with Checkpointer(ckpt_dir) as ckpt:
        if ckpt.latest_step() is None:
            return
        try:
            ckpt.restore(model, init_optimizer(make_optimizer(train_config), model))
        except ValueError as e:
            raise ValueError(
                f"{e}; train in another workdir, or with the settings of the run saved there"
            ) from e


def prepare(config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike[str]) -> Prepared:
    """Validates a run completely (config values, data, resumable checkpoint); writes nothing.

    Raises:
      One of `USER_ERRORS`, whose message names the bad value and what is allowed.
    """
    workdir = os.fspath(workdir)
    cfg = as_dict(config)
    objective = objective_from(cfg)
    train_config = train_config_from(cfg)
    ds, _ = load_data(cfg["data"])
    check_loss_fits_data(objective, ds, cfg["model"]["output"])
    n = ds.x_train.shape[0]
    if train_config.batch_size > n:
        raise ValueError(
            f"train.batch_size {train_config.batch_size} exceeds the {n} training examples of "
            f"dataset {ds.name!r}; use train.batch_size <= {n}"
        )
    devices = jax.device_count()
    if train_config.data_parallel and train_config.batch_size % devices:
        raise ValueError(
            f"train.data_parallel=True needs train.batch_size divisible by the {devices} "
            f"devices, got {train_config.batch_size}; use a multiple of {devices}"
        )
    model = build_model(cfg, ds.input_shape)
    check_resumable(workdir, model, train_config)
    return Prepared(cfg, ds, objective, train_config, model, workdir)


def run_prepared(run: Prepared) -> dict[str, Any]:
    """Trains (or resumes) a `prepare`d run, evaluates it, and writes its outputs."""
    started = time.perf_counter()
    os.makedirs(run.workdir, exist_ok=True)
    write_json(os.path.join(run.workdir, CONFIG_FILE), run.cfg)
    result = fit(
        run.model,
        run.objective,
        run.ds.x_train,
        config=run.train_config,
        x_test=run.ds.x_test,
        workdir=run.workdir,
        run_config=run.cfg,
    )
    metrics = evaluate_and_plot(result.model, run.ds, run.cfg, run.workdir, history=result.history)
    metrics["steps"] = result.step
    if result.history and "eval_reconstruction" in result.history[-1]:
        metrics["final_eval_reconstruction"] = result.history[-1]["eval_reconstruction"]
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(os.path.join(run.workdir, METRICS_FILE), metrics)
    return metrics


def train_and_evaluate(
    config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Trains (or resumes) the experiment `config` in `workdir`, evaluates it, writes its outputs.

    The whole run is validated first (`prepare`): bad input raises before anything in
    `workdir` is created or overwritten.

    Writes WORKDIR/config.json, checkpoints, metrics.jsonl and tb/ (by `aecore.train.fit`),
    metrics.json and the figures reconstructions.png, filters.png (MLPs) and loss_curves.png.

    Returns:
      The metrics: test `reconstruction_error`, `mean_jacobian_norm` (exact ‖J‖_F),
      `saturation`, `linear_probe_accuracy` (labelled data only), `steps`, `wall_time_s`,
      `figures` (name -> path).
    """
    return run_prepared(prepare(config, workdir))

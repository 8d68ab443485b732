"""`train_and_evaluate(config, workdir)`: one run from a config to checkpoints, metrics, figures.

A config (a ConfigDict or plain nested dict, see `aecore.configs`) holds one section per
dataclass: `data` (`DataConfig`), `model` (`ModelSpec`), `objective`, `train`; it is turned into
those dataclasses here and stored once, as WORKDIR/config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from aecore import _checks, evaluate, plots
from aecore.checkpoint import CheckpointError
from aecore.data import Dataset, load_dataset, normalize
from aecore.models import ModelSpec
from aecore.objective import Objective
from aecore.train import FitResult, TrainConfig, fit, init_optimizer, make_optimizer
from aecore.train.rundir import (
    CONFIG_FILE,
    DATA_FILE,
    FIGURES,
    METRICS_FILE,
    RunDir,
)

# Config keys that do not change what a run computes: they may differ when a run is resumed.
NOT_COMPARED = ("train.progress",)

# What `prepare` raises for bad input (config values, data, an incompatible or damaged
# checkpoint); the `aecore` command prints these as one line and exits with code 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, CheckpointError)

# What a workdir that already holds a run may do: refuse a different config, continue the
# stored run with its own config, or delete it and start over.
EXISTING_RUN = ("refuse", "resume_as_is", "overwrite")


def warn(message: str) -> None:
    """A one-line warning on stderr (`warnings.warn` would add a file and a source line)."""
    print(f"warning: {_checks.one_line(message)}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on (`aecore.data.load_dataset`) and how it is normalized.

    Attributes:
      name: a dataset name (`aecore.data.DATASETS`, or a TFDS name) or a .npy/.npz/.csv path.
      normalization: a method of `aecore.data.normalize` ("none", "unit", "standard", "pca").
      data_dir: TFDS data directory, or None for its default.
      max_examples: keep at most this many examples (before the split), or None for all.
      test_fraction: the held-out fraction of a dataset without its own test split.
      seed: the split's and subsample's seed.
    """

    name: str = "digits"
    normalization: str = "none"
    data_dir: str | None = None
    max_examples: int | None = None
    test_fraction: float = 0.2
    seed: int = 0


def as_dict(config: Any) -> dict[str, Any]:
    """A config (ConfigDict or nested dicts) as plain nested dicts, JSON-serialisable."""
    if hasattr(config, "to_dict"):  # a ConfigDict; aecore never imports ml_collections itself
        config = config.to_dict()
    return json.loads(json.dumps(config))


def load_data(
    data: dict[str, Any], *, name: str | None = None, dataset: Dataset | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """Loads and normalizes the dataset of a config's `data` section.

    `dataset`, when given, is used instead of loading `data["name"]` (an experiment's synthetic
    or preprocessed data); it is normalized by `data["normalization"]` all the same.

    Returns:
      (dataset with normalized inputs, normalization stats of `aecore.data.normalize` plus
      "record": the raw data's shape, training range and fingerprint, as written to
      WORKDIR/data.json).
    """
    d = DataConfig(**data)
    ds = dataset or load_dataset(
        name or d.name,
        data_dir=d.data_dir,
        test_fraction=d.test_fraction,
        seed=d.seed,
        max_examples=d.max_examples,
    )
    x_train, x_test, stats = normalize(ds.x_train, ds.x_test, method=d.normalization)
    digest = hashlib.sha256()
    for x in (ds.x_train, ds.x_test):
        digest.update(np.ascontiguousarray(x).tobytes())
    stats["record"] = {
        "name": ds.name,
        "input_shape": list(ds.input_shape),
        "num_train": int(ds.x_train.shape[0]),
        "num_test": int(ds.x_test.shape[0]),
        "train_min": float(ds.x_train.min()),  # raw units, before normalization
        "train_max": float(ds.x_train.max()),
        "sha256": digest.hexdigest(),
    }
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
    """The model of a config's `model` section (`ModelSpec.build`; weights from train.seed)."""
    return ModelSpec(**cfg["model"]).build(input_shape, key=cfg["train"]["seed"])


def train_model(
    spec: ModelSpec,
    objective: Objective,
    x_train: np.ndarray,
    *,
    config: TrainConfig,
    x_test: np.ndarray | None = None,
    workdir: str | None = None,
) -> FitResult:
    """Builds `spec` for x_train's examples (weights from `config.seed`) and `fit`s it.

    The in-memory form of a run (notebooks, scripts): no config file, no evaluation.
    """
    model = spec.build(x_train.shape[1:], key=config.seed)
    return fit(model, objective, x_train, config=config, x_test=x_test, workdir=workdir)


def objective_from(cfg: dict[str, Any]) -> Objective:
    return Objective(**cfg["objective"])


def train_config_from(cfg: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**cfg["train"])


def read_config(workdir: str) -> dict[str, Any]:
    """The config of a run: WORKDIR/config.json (the one place a run stores it)."""
    cfg = RunDir(workdir).read_json(CONFIG_FILE)
    if cfg is None:
        raise FileNotFoundError(
            f"{workdir} holds no {CONFIG_FILE}; train a model there first "
            "with `aecore train CONFIG --workdir DIR`"
        )
    return cfg


def restore_model(workdir: str, cfg: dict[str, Any], input_shape: tuple[int, ...]):
    """The model of the latest checkpoint in WORKDIR/checkpoints, built from `cfg`."""
    template = build_model(cfg, input_shape)
    with RunDir(workdir).checkpointer() as ckpt:
        model, _, step, _ = ckpt.restore(template)
    return model, step


def stored_config(workdir: str) -> dict[str, Any] | None:
    """The config of the run held in `workdir` (its config.json), or None."""
    try:
        return read_config(workdir)
    except FileNotFoundError:
        return None


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every config key whose value differs (`NOT_COMPARED` aside)."""
    a, b = _flatten(as_dict(old)), _flatten(as_dict(new))  # as_dict: tuples and lists alike
    missing = object()
    return [
        f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}".replace(repr(missing), "(absent)")
        for k in sorted(set(a) | set(b))
        if k not in NOT_COMPARED and a.get(k, missing) != b.get(k, missing)
    ]


def is_image(input_shape: tuple[int, ...]) -> bool:
    """Whether examples of this shape are images: [H, W, 1] or [H, W, 3] (digits: 8x8x1).

    Files of [N, H, W] already arrive as [N, H, W, 1]; [N, features] data, even 64 features
    that were once 8x8 digits, are vectors: nothing here guesses an image shape.
    """
    return len(input_shape) == 3 and input_shape[-1] in (1, 3)


def evaluate_run(model, ds: Dataset, cfg: dict[str, Any]) -> dict[str, Any]:
    """aecore.evaluate metrics of `model` on `ds` (numbers only; no figure, nothing written)."""
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
    return metrics


def _figure_makers(
    model, ds: Dataset, cfg: dict[str, Any], workdir: str, history: list[dict] | None
) -> dict[str, Callable[[], str]]:
    """Figure name -> a function that draws it into `workdir`; only figures that fit the data.

    Images: reconstructions as image pairs and (MLPs) first-layer filters. Feature vectors:
    reconstructed against input values, and for 2-D/3-D data the points with their
    reconstructions (the manifold). Codes of 2 or 3 units as a scatter. A contractive run
    (contractive or higher-order weight > 0): its Jacobian spectrum and contraction curve.
    """
    x = ds.x_test[:500]
    shape = ds.input_shape
    path = {name: RunDir(workdir).figure(name) for name in FIGURES}
    labels = None if ds.y_test is None else ds.y_test[:500]
    makers: dict[str, Callable[[], str]] = {}
    if is_image(shape):
        makers["reconstructions"] = lambda: plots.save_reconstructions(
            path["reconstructions"], x[:10], evaluate.reconstruct(model, x[:10])
        )
        if cfg["model"]["architecture"] == "mlp":
            makers["filters"] = lambda: plots.save_filters(
                path["filters"],
                np.asarray(model.encoder.layers[0].kernel[...]),
                image_shape=shape,
                n=64,
            )
    else:
        makers["reconstruction_scatter"] = lambda: plots.save_reconstruction_scatter(
            path["reconstruction_scatter"], x, evaluate.reconstruct(model, x)
        )
        if len(shape) == 1 and shape[0] == 2:
            makers["manifold"] = lambda: plots.save_vector_field(
                path["manifold"], x, evaluate.reconstruct(model, x)
            )
        elif len(shape) == 1 and shape[0] == 3:
            makers["manifold"] = lambda: plots.save_points_3d(
                path["manifold"], x, reconstructions=evaluate.reconstruct(model, x)
            )
        elif int(np.prod(shape)) > 3:
            makers["reconstructions"] = lambda: plots.save_reconstructions(
                path["reconstructions"], x[:10], evaluate.reconstruct(model, x[:10])
            )
    d_z = int(cfg["model"]["hidden"][-1]) if cfg["model"]["architecture"] == "mlp" else None
    if d_z == 2:
        makers["codes"] = lambda: plots.save_codes_2d(
            path["codes"], evaluate.encode(model, x), labels
        )
    elif d_z == 3:
        makers["codes"] = lambda: plots.save_points_3d(
            path["codes"], evaluate.encode(model, x), labels=labels, axis="h"
        )
    if history:
        makers["loss_curves"] = lambda: plots.save_loss_curves(path["loss_curves"], history)
    objective = cfg["objective"]
    if objective["contractive"] > 0 or objective["higher_order"] > 0:
        makers["spectrum"] = lambda: plots.save_spectrum(
            path["spectrum"], evaluate.jacobian_spectrum(model, x, max_examples=100)
        )

        def contraction() -> str:
            # Radii from the typical distance between two test examples (Rifai et al., Fig. 2).
            half = max(1, x.shape[0] // 2)
            flat = x.reshape(x.shape[0], -1)
            dist = float(np.median(np.linalg.norm(flat[:half] - flat[half : 2 * half], axis=1)))
            curve = evaluate.contraction_curve(
                model,
                x,
                radii=(dist or 1.0) * np.geomspace(0.01, 1.0, 12),
                key=jax.random.key(cfg["train"]["seed"]),
            )
            name = f"contractive {objective['contractive']:g}"
            if objective["higher_order"] > 0:
                name += f", higher order {objective['higher_order']:g}"
            return plots.save_contraction_curves(path["contraction"], {name: curve})

        makers["contraction"] = contraction
    return makers


def save_figures(
    model, ds: Dataset, cfg: dict[str, Any], workdir: str, *, history: list[dict] | None
) -> dict[str, str]:
    """Draws the figures that fit the data (`_figure_makers`); name -> path of those drawn.

    A figure that cannot be drawn costs a one-line warning on stderr, never the run: the
    metrics are already on disk when this is called.
    """
    figures = {}
    for name, make in _figure_makers(model, ds, cfg, workdir, history).items():
        try:
            figures[name] = make()
        except Exception as e:  # a figure is never worth a crash after training
            warn(f"figure {name!r} not drawn: {type(e).__name__}: {e}")
    return figures


def finish_run(
    model,
    ds: Dataset,
    cfg: dict[str, Any],
    workdir: str,
    *,
    history: list[dict] | None,
    metrics: dict[str, Any],
    figures: bool = True,
) -> dict[str, Any]:
    """Evaluates `model`, writes WORKDIR/metrics.json, then (`figures`) draws the figures.

    `metrics` holds the keys to keep (an earlier metrics.json, steps, timings); the recomputed
    metrics replace their namesakes. metrics.json is written before any figure is drawn, and
    rewritten with the figures' paths once they are.
    """
    metrics = {**metrics, **evaluate_run(model, ds, cfg)}
    if "final_eval_reconstruction" not in metrics and history:
        last = [r["eval_reconstruction"] for r in history if "eval_reconstruction" in r]
        if last:
            metrics["final_eval_reconstruction"] = last[-1]
    run = RunDir(workdir)
    run.write_json(METRICS_FILE, metrics)
    if not figures:
        return metrics
    figures = {  # figures drawn earlier and still on disk stay listed
        k: v for k, v in metrics.get("figures", {}).items() if os.path.exists(v)
    }
    figures.update(save_figures(model, ds, cfg, workdir, history=history))
    metrics["figures"] = figures
    run.write_json(METRICS_FILE, metrics)
    return metrics


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated run: everything `train_and_evaluate` needs, built before any file is written."""

    cfg: dict[str, Any]
    ds: Dataset
    objective: Objective
    train_config: TrainConfig
    model: Any
    workdir: str
    data_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    overwrite: bool = False  # delete the run found in `workdir` (its `RUN_FILES`) first


def check_resumable(workdir: str, model, train_config: TrainConfig) -> None:
    """Restores the latest checkpoint of `workdir` (if any) into `model`'s shapes, or raises.

    Raises:
      ValueError: the checkpoint holds a model or optimizer state of other shapes.
      CheckpointError: the checkpoint is truncated or corrupted.
    """
    run = RunDir(workdir)
    if not run.has_checkpoint_dir():  # nothing to resume; do not create the directory here
        return
    with run.checkpointer() as ckpt:
        if ckpt.latest_step() is None:
            return
        try:
            ckpt.restore(model, init_optimizer(make_optimizer(train_config), model))
        except ValueError as e:
            raise ValueError(
                f"{e}; train in another workdir, continue the run saved there with its own "
                "config (--resume-as-is), or delete it and start over (--overwrite)"
            ) from e


def check_same_run(workdir: str, cfg: dict[str, Any], data_record: dict[str, Any], model) -> None:
    """Refuses to resume a run of `workdir` whose config or data differ from this one.

    Also restores the stored checkpoint into `model`'s shapes (`check_resumable`): a damaged
    checkpoint is reported as such, and one that does not fit adds its reason to the message.

    Raises:
      ValueError: one line naming every differing key with its stored and new value.
      CheckpointError: the checkpoint is truncated or corrupted.
    """
    train_config = train_config_from(cfg)
    stored = stored_config(workdir)
    diff = [] if stored is None else config_diff(stored, cfg)
    old_data = RunDir(workdir).read_json(DATA_FILE)
    if old_data and not diff and old_data.get("sha256") != data_record["sha256"]:
        diff = [f"the values of data.name {cfg['data']['name']!r} (its sha256 changed)"]
    if not diff:
        check_resumable(workdir, model, train_config)
        return
    try:
        check_resumable(workdir, model, train_config)
        why = ""
    except ValueError as e:  # the shapes that differ, without check_resumable's advice
        why = f"; its checkpoint does not fit: {e.__cause__ or e}"
    raise ValueError(
        f"{workdir} holds a run with another config ({'; '.join(diff)}){why}; pass "
        "--resume-as-is to continue that run with its own config, --overwrite to delete it "
        "and start over, or use another --workdir"
    )


def prepare(
    config: Any,
    workdir: str | os.PathLike[str],
    *,
    existing: str = "refuse",
    dataset: Dataset | None = None,
) -> Prepared:
    """Validates a run completely (config values, data, resumable checkpoint); writes nothing.

    Args:
      config: the experiment config.
      workdir: where the run lives. A run already there (checkpoints or config.json) is
        resumed when its config is the same as `config` (`NOT_COMPARED` keys aside).
      existing: what to do when `workdir` holds a run with another config: "refuse" (raise,
        listing the differing keys), "resume_as_is" (continue the stored run with its own
        config; `config` is ignored) or "overwrite" (delete the stored run before training).
      dataset: data to train on instead of loading `config.data.name` (see `load_data`).

    Raises:
      One of `USER_ERRORS`, whose message names the bad value and what is allowed.
    """
    _checks.check_choice("existing", existing, EXISTING_RUN)
    workdir = os.fspath(workdir)
    cfg = as_dict(config)
    if existing == "resume_as_is":
        stored = stored_config(workdir)
        if stored is None:
            raise FileNotFoundError(
                f"--resume-as-is: {workdir} holds no run to continue (no checkpoint, no "
                f"{CONFIG_FILE}); drop the flag to start one"
            )
        ignored = config_diff(stored, cfg)
        if ignored:
            warn(f"--resume-as-is: the run keeps its own config ({'; '.join(ignored)})")
        cfg = stored
    objective = objective_from(cfg)
    train_config = train_config_from(cfg)
    ds, stats = load_data(cfg["data"], dataset=dataset)
    check_loss_fits_data(objective, ds, cfg["model"]["output"])
    n = ds.x_train.shape[0]
    batch_size = train_config.batch_size or n  # None: the whole training set
    if batch_size > n:
        raise ValueError(
            f"train.batch_size {batch_size} exceeds the {n} training examples of "
            f"dataset {ds.name!r}; use train.batch_size <= {n}, or none for the full batch"
        )
    devices = jax.device_count()
    parallel = train_config.data_parallel or jax.process_count() > 1  # as `fit` decides
    if parallel and batch_size % devices:
        raise ValueError(
            f"train.data_parallel=True needs train.batch_size divisible by the {devices} "
            f"devices, got {batch_size}; use a multiple of {devices}"
        )
    model = build_model(cfg, ds.input_shape)
    if existing == "refuse":
        check_same_run(workdir, cfg, stats["record"], model)
    elif existing == "resume_as_is":
        check_resumable(workdir, model, train_config)
    return Prepared(
        cfg,
        ds,
        objective,
        train_config,
        model,
        workdir,
        data_record=stats["record"],
        overwrite=existing == "overwrite",
    )


def _train_prepared(run: Prepared) -> tuple[FitResult, dict[str, Any]]:
    """Trains (or resumes) a `prepare`d run: (the fit result, the metrics it adds)."""
    started = time.perf_counter()
    rundir = RunDir(run.workdir)
    if jax.process_index() == 0:  # in a multi-process run, process 0 writes the run's files
        if run.overwrite and os.path.isdir(run.workdir):
            removed = rundir.remove_run()
            if removed:
                warn(
                    f"--overwrite: deleted the earlier run in {run.workdir} ({', '.join(removed)})"
                )
        os.makedirs(run.workdir, exist_ok=True)
        rundir.write_json(CONFIG_FILE, run.cfg)
        rundir.write_json(DATA_FILE, run.data_record)
    if jax.process_count() > 1:  # nobody reads the workdir before process 0 has laid it out
        multihost_utils.sync_global_devices("aecore_run_prepared")
    result = fit(
        run.model,
        run.objective,
        run.ds.x_train,
        config=run.train_config,
        x_test=run.ds.x_test,
        workdir=run.workdir,
    )
    metrics = {"steps": result.step}
    if result.history and "eval_reconstruction" in result.history[-1]:
        metrics["final_eval_reconstruction"] = result.history[-1]["eval_reconstruction"]
    if result.best_step is not None:  # early stopping: the kept model is the best evaluated one
        metrics["best_step"] = result.best_step
        metrics["best_eval_reconstruction"] = min(
            r["eval_reconstruction"] for r in result.history if "eval_reconstruction" in r
        )
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    return result, metrics


def run_prepared(run: Prepared, *, figures: bool = True) -> tuple[FitResult, dict[str, Any]]:
    """Trains (or resumes) a `prepare`d run, evaluates it and writes its outputs (`figures`:
    also the figures); returns the fit result and the metrics (as in WORKDIR/metrics.json)."""
    result, metrics = _train_prepared(run)
    if jax.process_index() != 0:  # evaluation, metrics.json and figures: process 0 alone
        return result, metrics
    return result, finish_run(
        result.model,
        run.ds,
        run.cfg,
        run.workdir,
        history=result.history,
        metrics=metrics,
        figures=figures,
    )


def train_and_evaluate(
    config: Any,
    workdir: str | os.PathLike[str],
    *,
    existing: str = "refuse",
) -> dict[str, Any]:
    """Trains (or resumes) the experiment `config` in `workdir`, evaluates it, writes its outputs.

    The whole run is validated first (`prepare`): bad input, or a workdir that holds a run with
    another config (unless `existing` says otherwise, see `prepare`), raises before anything
    in `workdir` is created or overwritten.

    Writes WORKDIR/config.json, data.json (the training data's shape, range and sha256),
    checkpoints, metrics.jsonl and tb/ (by `aecore.train.fit`), then metrics.json, then the
    figures that fit the data (`_figure_makers`; one that fails is a warning).

    Returns:
      The metrics: test `reconstruction_error`, `mean_jacobian_norm` (exact ‖J‖_F),
      `saturation`, `linear_probe_accuracy` (labelled data only), `steps`, `wall_time_s`,
      `final_eval_reconstruction`, `figures` (name -> path).
    """
    return run_prepared(prepare(config, workdir, existing=existing))[1]

"""`train_and_evaluate(config, workdir)`: one run from a config to checkpoints, metrics, figures.

A config (a ConfigDict or plain nested dict, see `aecore.configs`) holds one section per
dataclass: `data` (`DataConfig`), `model` (`ModelSpec`), `objective`, `train`; it becomes a
frozen `RunConfig` once, where it enters, and is stored once, as WORKDIR/config.json.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from aecore import _checks, evaluate, plots
from aecore.checkpoint import CheckpointError
from aecore.data import DataConfig, Dataset, load_dataset, normalize
from aecore.models import ModelSpec
from aecore.objective import Objective
from aecore.train import FitResult, TrainConfig, fit, init_optimizer, make_optimizer
from aecore.train.rundir import (
    CONFIG_FILE,
    DATA_FILE,
    FIGURES,
    MARKER_FILE,
    METRICS_FILE,
    RunDir,
    StorageError,
    hold_lock,
    release_lock,
    storage_error,
)

# Config keys that do not change what a run computes: they may differ when a run is resumed.
NOT_COMPARED = ("train.progress",)

# The parameter dtypes a run from a config trains in (half precision is for aecore.models).
TRAIN_DTYPES = ("float32", "float64")

# What `prepare` raises for bad input (config values, data, an incompatible or damaged
# checkpoint); the `aecore` command prints these as one line and exits with code 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, CheckpointError)

# What a workdir that already holds a run may do: refuse a different config, continue the
# stored run with its own config, or delete it and start over.
EXISTING_RUN = ("refuse", "resume_as_is", "overwrite")


warn = _checks.warn  # a one-line warning on stderr


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run's whole config: what `train_and_evaluate` trains, evaluates and stores.

    Built once where a config enters (`RunConfig.of`: the `aecore` command, the experiments);
    every later step reads its sections, never the dicts it came from.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    objective: Objective = dataclasses.field(default_factory=Objective)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @classmethod
    def of(cls, config: Any) -> RunConfig:
        """`config` (a RunConfig, a ConfigDict or nested dicts, one per section) as a RunConfig.

        Raises:
          ValueError / TypeError: an unknown section or field, or a value out of range (named).
        """
        if isinstance(config, RunConfig):
            return config
        cfg = _as_dict(config)
        sections: dict[str, Any] = {f.name: f.default_factory for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - set(sections))
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; valid: {list(sections)}")
        return cls(**{name: make(**cfg.get(name, {})) for name, make in sections.items()})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored as WORKDIR/config.json (user terms are code: never stored)."""
        if self.objective.extra_terms:
            raise ValueError(
                "a run from a config stores its config as JSON, which cannot hold "
                "objective.extra_terms (code); train with aecore.train.fit instead"
            )
        return _as_dict(
            {
                f.name: {
                    g.name: getattr(getattr(self, f.name), g.name)
                    for g in dataclasses.fields(getattr(self, f.name))
                    if g.name != "extra_terms"
                }
                for f in dataclasses.fields(self)
            }
        )


def _as_dict(config: Any) -> dict[str, Any]:
    """A config (ConfigDict or nested dicts) as plain nested dicts, JSON-serialisable."""
    if hasattr(config, "to_dict"):  # a ConfigDict; aecore never imports ml_collections itself
        config = config.to_dict()
    return json.loads(json.dumps(config))


def load_data(d: DataConfig, *, dataset: Dataset | None = None) -> tuple[Dataset, dict[str, Any]]:
    """Loads and normalizes the dataset of a config's `data` section.

    `dataset`, when given, is used instead of loading `d.name` (an experiment's synthetic or
    preprocessed data); it is normalized by `d.normalization` all the same.

    Returns:
      (dataset with normalized inputs, normalization stats of `aecore.data.normalize` plus
      "record": the raw data's shape, training range and fingerprint, as written to
      WORKDIR/data.json).
    """
    ds = dataset or load_dataset(
        d.name,
        data_dir=d.data_dir,
        test_fraction=d.test_fraction,
        seed=d.seed,
        max_examples=d.max_examples,
    )
    x_train, x_test, stats = normalize(ds.x_train, ds.x_test, method=d.normalization)
    assert x_test is not None  # normalize maps the test array to an array
    digest = hashlib.sha256()
    for x in (ds.x_train, ds.x_test):
        digest.update(np.ascontiguousarray(x).tobytes())
    name = os.fspath(d.name) if dataset is None else ds.name
    stats["record"] = {
        "name": ds.name,
        # A file is recorded as given and as an absolute path (another cwd still finds it).
        "path": os.path.abspath(name) if os.path.isfile(name) else None,
        "num_examples": int(ds.x_train.shape[0] + ds.x_test.shape[0]),  # every row read
        "input_shape": list(ds.input_shape),
        "num_train": int(ds.x_train.shape[0]),
        "num_test": int(ds.x_test.shape[0]),
        "train_min": float(ds.x_train.min()),  # raw units, before normalization
        "train_max": float(ds.x_train.max()),
        "data_min": float(min(ds.x_train.min(), ds.x_test.min())),  # the whole file: it encodes
        "data_max": float(max(ds.x_train.max(), ds.x_test.max())),
        "sha256": digest.hexdigest(),
    }
    lo, hi = float(min(x_train.min(), x_test.min())), float(max(x_train.max(), x_test.max()))
    value_range = "unit" if lo >= 0.0 and hi <= 1.0 else "real"
    ds = dataclasses.replace(ds, x_train=x_train, x_test=x_test, value_range=value_range)
    return ds, stats


def _check_batch_fits_data(train: TrainConfig, ds: Dataset) -> None:
    """A batch holds at most the whole training set (data-parallel: a multiple of the devices)."""
    n = ds.x_train.shape[0]
    batch_size = train.batch_size or n  # None: the whole training set
    if batch_size > n:
        raise ValueError(
            f"train.batch_size {batch_size} exceeds the {n} training examples of "
            f"dataset {ds.name!r}; use train.batch_size <= {n}, or none for the full batch"
        )
    devices = jax.device_count()
    parallel = train.data_parallel or jax.process_count() > 1  # as `fit` decides
    if parallel and batch_size % devices:
        raise ValueError(
            f"train.data_parallel=True needs train.batch_size divisible by the {devices} "
            f"devices, got {batch_size}; use a multiple of {devices}"
        )


def _check_loss_fits_data(config: RunConfig, ds: Dataset) -> None:
    """Cross-entropy needs targets in [0, 1] and a sigmoid decoder; say so before training."""
    if config.objective.loss != "cross_entropy":
        return
    if ds.value_range != "unit":
        lo = float(min(ds.x_train.min(), ds.x_test.min()))
        hi = float(max(ds.x_train.max(), ds.x_test.max()))
        raise ValueError(
            f"the cross-entropy loss needs data in [0, 1], but dataset {ds.name!r} holds values "
            f"in [{lo:g}, {hi:g}]; set data.normalization='unit', or use "
            "objective.loss='squared_error' with model.output='identity'"
        )
    if config.model.output != "sigmoid":
        raise ValueError(
            "the cross-entropy loss needs model.output='sigmoid', got "
            f"{config.model.output!r}; use objective.loss='squared_error' for an identity output"
        )


def build_model(config: Any, input_shape: tuple[int, ...]):
    """The model of a config's `model` section (`ModelSpec.build`; weights from train.seed)."""
    config = RunConfig.of(config)
    return config.model.build(input_shape, key=config.train.seed)


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


def load_run_data(
    workdir: str, config: RunConfig, *, allow_different: bool = False
) -> tuple[Dataset, dict[str, Any], dict[str, Any]]:
    """The data of the run in `workdir` (`load_data`), checked against its data.json.

    A file is read from the absolute path data.json recorded (a run evaluates from any
    directory). Data whose sha256 differs from the recorded one (the file changed since
    training) is refused unless `allow_different`, then used with a warning.

    Returns:
      (dataset, stats, data): `data` says which data the numbers are computed on: name,
      path, sha256, number of examples and whether it is the data the run trained on.

    Raises:
      ValueError: the data differ from the run's (names both fingerprints).
    """
    trained = RunDir(workdir).read_json(DATA_FILE) or {}
    d = config.data
    if trained.get("path") and os.path.isfile(trained["path"]):
        d = dataclasses.replace(d, name=trained["path"])
    ds, stats = load_data(d)
    now = stats["record"]
    same = not trained.get("sha256") or trained["sha256"] == now["sha256"]
    if not same:
        message = (
            f"the data of {workdir} changed since training: {d.name} now gives "
            f"{now['num_train'] + now['num_test']} examples (sha256 {now['sha256'][:12]}...), the "
            f"run was trained on {trained.get('num_train', 0) + trained.get('num_test', 0)} "
            f"(sha256 {trained['sha256'][:12]}...)"
        )
        if not allow_different:
            raise ValueError(f"{message}; pass --allow-different-data to use it anyway")
        warn(f"{message}; using it anyway (--allow-different-data)")
    data = {
        "name": now["name"],
        "path": now.get("path"),
        "sha256": now["sha256"],
        "num_examples": now["num_examples"],
        "same_as_training": same,
    }
    return ds, stats, data


def read_config(workdir: str) -> RunConfig:
    """The config of a run: WORKDIR/config.json (the one place a run stores it)."""
    cfg = _stored_config(workdir)
    if cfg is None:
        raise FileNotFoundError(
            f"{workdir} holds no {CONFIG_FILE}; train a model there first "
            "with `aecore train CONFIG --workdir DIR`"
        )
    return RunConfig.of(cfg)


def restore_model(workdir: str, config: RunConfig, input_shape: tuple[int, ...]):
    """The model of the latest checkpoint in WORKDIR/checkpoints, built from `config`."""
    template = build_model(config, input_shape)
    with RunDir(workdir).checkpointer() as ckpt:
        model, _, step, _ = ckpt.restore(template)
    return model, step


def _stored_config(workdir: str) -> dict[str, Any] | None:
    """The config of the run held in `workdir` (its config.json, as stored), or None."""
    return RunDir(workdir).read_json(CONFIG_FILE)


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(old: Any, new: Any) -> list[str]:
    """`key: old -> new` for every config key whose value differs (`NOT_COMPARED` aside)."""
    a, b = (_flatten(c.to_dict() if isinstance(c, RunConfig) else _as_dict(c)) for c in (old, new))
    missing = object()
    return [
        f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}".replace(repr(missing), "(absent)")
        for k in sorted(set(a) | set(b))
        if k not in NOT_COMPARED and a.get(k, missing) != b.get(k, missing)
    ]


def _is_image(input_shape: tuple[int, ...]) -> bool:
    """Whether examples of this shape are images: [H, W, 1] or [H, W, 3] (digits: 8x8x1).

    Files of [N, H, W] already arrive as [N, H, W, 1]; [N, features] data, even 64 features
    that were once 8x8 digits, are vectors: nothing here guesses an image shape.
    """
    return len(input_shape) == 3 and input_shape[-1] in (1, 3)


def _evaluate_run(model, ds: Dataset, config: RunConfig) -> dict[str, Any]:
    """aecore.evaluate metrics of `model` on `ds` (numbers only; no figure, nothing written)."""
    max_examples = 500 if config.data.max_examples else 2000
    metrics = evaluate.evaluate_model(model, ds, config.objective, max_examples=max_examples)
    m = config.model
    if m.activation == "identity" and m.output == "identity" and m.architecture == "mlp":
        # A linear autoencoder with squared error should reach PCA's subspace and error.
        k = int(m.hidden[-1])
        x_train = ds.x_train[:max_examples]
        metrics["pca_reconstruction_error"] = evaluate.pca_reconstruction_error(
            x_train, ds.x_test[:max_examples], k
        )
        metrics["max_pca_angle_rad"] = float(np.max(evaluate.pca_angles(model, x_train)))
    return metrics


def _figure_makers(
    model, ds: Dataset, config: RunConfig, workdir: str, history: list[dict] | None
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
    if _is_image(shape):
        makers["reconstructions"] = lambda: plots.save_reconstructions(
            path["reconstructions"], x[:10], evaluate.reconstruct(model, x[:10])
        )
        if config.model.architecture == "mlp":
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
    d_z = int(config.model.hidden[-1]) if config.model.architecture == "mlp" else None
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
    objective = config.objective
    if objective.contractive > 0 or objective.higher_order > 0:
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
                key=jax.random.key(config.train.seed),
            )
            name = f"contractive {objective.contractive:g}"
            if objective.higher_order > 0:
                name += f", higher order {objective.higher_order:g}"
            return plots.save_contraction_curves(path["contraction"], {name: curve})

        makers["contraction"] = contraction
    return makers


def _save_figures(
    model, ds: Dataset, config: RunConfig, workdir: str, *, history: list[dict] | None
) -> dict[str, str]:
    """Draws the figures that fit the data (`_figure_makers`); name -> path of those drawn.

    A figure that cannot be drawn costs a one-line warning on stderr, never the run: the
    metrics are already on disk when this is called.
    """
    figures = {}
    for name, make in _figure_makers(model, ds, config, workdir, history).items():
        try:
            figures[name] = make()
        except Exception as e:  # a figure is never worth a crash after training
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise storage_error(RunDir(workdir).figure(name), e, "metrics.json") from e
            warn(f"figure {name!r} not drawn: {type(e).__name__}: {e}")
    return figures


def finish_run(
    model,
    ds: Dataset,
    config: RunConfig,
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
    metrics = {**metrics, **_evaluate_run(model, ds, config)}
    if "final_eval_reconstruction" not in metrics and history:
        last = [r["eval_reconstruction"] for r in history if "eval_reconstruction" in r]
        if last:
            metrics["final_eval_reconstruction"] = last[-1]
    _write_metrics(workdir, metrics, "the checkpoints")
    if not figures:
        return metrics
    drawn = {  # figures drawn earlier and still on disk stay listed
        k: v for k, v in metrics.get("figures", {}).items() if os.path.exists(v)
    }
    drawn.update(_save_figures(model, ds, config, workdir, history=history))
    metrics["figures"] = drawn
    _write_metrics(workdir, metrics, "the checkpoints, metrics.json without the figures' paths")
    return metrics


def _write_metrics(workdir: str, metrics: dict[str, Any], kept: str) -> None:
    """Writes metrics.json; a run whose metrics cannot be written never reports success."""
    try:
        RunDir(workdir).write_json(METRICS_FILE, metrics)
    except StorageError as e:
        raise StorageError(
            f"{e}; kept: {kept} (`aecore evaluate {workdir}` writes it once there is space)"
        ) from e


def is_aecore_run(workdir: str) -> bool:
    """Whether aecore wrote the run files in `workdir`: its marker (aecore_run.json) is there,
    or (a run from before markers) its config.json is a whole aecore config and its
    data.json, if any, records a sha256."""
    run = RunDir(workdir)
    if os.path.isfile(run.file(MARKER_FILE)):
        return True
    try:
        stored, data = run.read_json(CONFIG_FILE), run.read_json(DATA_FILE)
        if stored is None or set(stored) != {f.name for f in dataclasses.fields(RunConfig)}:
            return False
        RunConfig.of(stored)
    except (ValueError, TypeError):
        return False
    return data is None or "sha256" in data


def check_workdir(workdir: str) -> None:
    """Refuses a workdir aecore cannot or must not write: a file, under a file, read-only,
    holding files of a run's names that aecore did not write, or links among them.

    Raises:
      ValueError: one line naming the path and what to do.
    """
    path = os.path.abspath(workdir)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"workdir {workdir} is a file, not a folder; use another --workdir")
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"workdir {workdir} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"workdir {workdir} is not writable ({parent} is read-only to you)")
    run = RunDir(workdir)
    links = run.symlinks()
    if links:
        raise ValueError(
            f"{run.file(links[0])} is a symbolic link (to {os.readlink(run.file(links[0]))}); "
            "aecore never writes through links inside a workdir: replace it by a plain file "
            "or folder, or use another --workdir"
        )
    present = run.present()
    if present and not is_aecore_run(workdir):
        raise ValueError(
            f"{workdir} holds files aecore did not write ({', '.join(present)}; no "
            f"{MARKER_FILE}); aecore writes only into an empty folder or a run it marked, and "
            "--overwrite deletes only such runs: use another --workdir"
        )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated run: everything `train_and_evaluate` needs, built before any file is written."""

    config: RunConfig
    ds: Dataset
    model: Any
    workdir: str
    data_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    overwrite: bool = False  # delete the run found in `workdir` (its `RUN_FILES`) first


def _check_resumable(workdir: str, model, train_config: TrainConfig) -> None:
    """Restores the latest checkpoint of `workdir` (if any) into `model`'s shapes, or raises.

    Raises:
      ValueError: the checkpoint holds a model or optimizer state of other shapes.
      CheckpointError: no checkpoint is intact.
    """
    run = RunDir(workdir)
    if not run.has_checkpoint_dir():  # nothing to resume; do not create the directory here
        return
    with run.checkpointer() as ckpt:
        if ckpt.latest_step() is None:
            return
        try:  # as the resume will: damaged newer steps are skipped (`fit` says which)
            ckpt.restore(model, init_optimizer(make_optimizer(train_config), model), fallback=True)
        except ValueError as e:
            raise ValueError(
                f"{e}; train in another workdir, continue the run saved there with its own "
                "config (--resume-as-is), or delete it and start over (--overwrite)"
            ) from e


def _check_same_run(workdir: str, config: RunConfig, data_record: dict[str, Any], model) -> None:
    """Refuses to resume a run of `workdir` whose config or data differ from this one.

    Also restores the stored checkpoint into `model`'s shapes (`_check_resumable`): a damaged
    checkpoint is reported as such, and one that does not fit adds its reason to the message.

    Raises:
      ValueError: one line naming every differing key with its stored and new value.
      CheckpointError: the checkpoint is truncated or corrupted.
    """
    stored = _stored_config(workdir)
    diff = [] if stored is None else _config_diff(stored, config)
    old_data = RunDir(workdir).read_json(DATA_FILE)
    if old_data and not diff and old_data.get("sha256") != data_record["sha256"]:
        diff = [f"the values of data.name {config.data.name!r} (its sha256 changed)"]
    if not diff:
        _check_resumable(workdir, model, config.train)
        return
    try:
        _check_resumable(workdir, model, config.train)
        why = ""
    except ValueError as e:  # the shapes that differ, without _check_resumable's advice
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
      config: the experiment config (a `RunConfig`, or a ConfigDict or nested dicts).
      workdir: where the run lives. A run already there (checkpoints or config.json) is
        resumed when its config is the same as `config` (`NOT_COMPARED` keys aside).
      existing: what to do when `workdir` holds a run with another config: "refuse" (raise,
        listing the differing keys), "resume_as_is" (continue the stored run with its own
        config; `config` is ignored) or "overwrite" (delete the stored run before training).
      dataset: data to train on instead of loading `config.data.name` (see `load_data`).

    Raises:
      ValueError: (or another of `USER_ERRORS`) a bad value; the message names it and what is
        allowed.
    """
    _checks.check_choice("existing", existing, EXISTING_RUN)
    workdir = os.fspath(workdir)
    check_workdir(workdir)
    if existing == "resume_as_is":
        stored = _stored_config(workdir)
        if stored is None:
            raise FileNotFoundError(
                f"--resume-as-is: {workdir} holds no run to continue (no checkpoint, no "
                f"{CONFIG_FILE}); drop the flag to start one"
            )
        ignored = _config_diff(stored, config)
        if ignored:
            warn(f"--resume-as-is: the run keeps its own config ({'; '.join(ignored)})")
        config = stored
    config = RunConfig.of(config)
    _checks.check_int("train.seed", config.train.seed)
    if config.model.dtype not in TRAIN_DTYPES:
        raise ValueError(
            f"model.dtype {config.model.dtype!r} is not supported for training a config; "
            f"supported: {', '.join(map(repr, TRAIN_DTYPES))}"
        )
    ds, stats = load_data(config.data, dataset=dataset)
    _check_loss_fits_data(config, ds)
    _check_batch_fits_data(config.train, ds)
    model = build_model(config, ds.input_shape)
    if existing != "overwrite":  # a damaged metric log is refused now, in one line
        RunDir(workdir).history(warn=False)
    if existing == "refuse":
        _check_same_run(workdir, config, stats["record"], model)
    elif existing == "resume_as_is":
        _check_resumable(workdir, model, config.train)
    return Prepared(
        config,
        ds,
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
        try:
            os.makedirs(run.workdir, exist_ok=True)
        except OSError as e:
            raise storage_error(run.workdir, e) from e
        hold_lock(run.workdir)  # before anything is written or deleted
        if run.overwrite:
            removed = rundir.remove_run()
            if removed:
                warn(
                    f"--overwrite: deleted the earlier run in {run.workdir} ({', '.join(removed)})"
                )
        rundir.mark()  # first: an interrupted first run is still known as aecore's
        rundir.write_json(CONFIG_FILE, run.config.to_dict())
        rundir.write_json(DATA_FILE, run.data_record)
    if jax.process_count() > 1:  # nobody reads the workdir before process 0 has laid it out
        multihost_utils.sync_global_devices("aecore_run_prepared")
    result = fit(
        run.model,
        run.config.objective,
        run.ds.x_train,
        config=run.config.train,
        x_test=run.ds.x_test,
        workdir=run.workdir,
    )
    metrics: dict[str, Any] = {"steps": result.step}
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
    try:
        result, metrics = _train_prepared(run)
        if jax.process_index() != 0:  # evaluation, metrics.json and figures: process 0 alone
            return result, metrics
        return result, finish_run(
            result.model,
            run.ds,
            run.config,
            run.workdir,
            history=result.history,
            metrics=metrics,
            figures=figures,
        )
    finally:
        release_lock(run.workdir)


def train_and_evaluate(
    config: Any,
    workdir: str | os.PathLike[str],
    *,
    existing: str = "refuse",
) -> dict[str, Any]:
    """Trains (or resumes) the experiment `config` in `workdir`, evaluates it, writes its outputs.

    The whole run is validated first (`prepare`): bad input, or a workdir that holds a run with
    another config (unless `existing` says otherwise, see `prepare`), raises before anything
    in `workdir` is created or overwritten. One process writes a workdir at a time: this one
    holds WORKDIR/aecore.lock (`rundir.hold_lock`) while it trains and evaluates, and a
    workdir another process holds is refused (ValueError naming its PID).

    Writes WORKDIR/config.json, data.json (the training data's shape, range and sha256),
    checkpoints, metrics.jsonl and tb/ (by `aecore.train.fit`), then metrics.json, then the
    figures that fit the data (`_figure_makers`; one that fails is a warning).

    Returns:
      The metrics: test `reconstruction_error`, `mean_jacobian_norm` (exact ‖J‖_F),
      `saturation`, `linear_probe_accuracy` (labelled data only), `steps`, `wall_time_s`,
      `final_eval_reconstruction`, `figures` (name -> path).
    """
    workdir = os.fspath(workdir)
    hold_lock(workdir, create=False)  # a run another process is writing: refuse now
    try:
        return run_prepared(prepare(config, workdir, existing=existing))[1]
    finally:
        release_lock(workdir)

"""Training: one jitted step for every variant (objective + optax), and the loop around it.

The step is pure: it takes and returns model and optimizer state, so it runs unchanged on CPU,
GPU, TPU, and on sharded inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aecore import _checks
from aecore.checkpoint import Checkpointer
from aecore.objective import Objective, objective_terms, reconstruction


def make_train_step(
    objective: Objective, optimizer: optax.GradientTransformation, *, donate: bool = True
) -> Callable:
    """Builds `step(model, opt_state, x, key) -> (model, opt_state, metrics)`, jitted once.

    Args:
      objective: what to minimise (loss, regularizers, corruption).
      optimizer: any optax transformation.
      donate: donate model and optimizer buffers to the step (in-place update on accelerators).

    Returns:
      The jitted step. `metrics` holds the total `loss`, each objective term, `grad_norm`, and
      `finite` (False if the loss or any gradient is NaN/inf; the update is then still returned,
      so the caller must check `finite` before keeping the new state).
    """

    def step(model, opt_state, x, key):
        (loss, terms), grads = jax.value_and_grad(
            lambda m: objective_terms(m, x, key, objective), has_aux=True
        )(model)
        # optax raises Python floats to int32 step counts (bias correction), which strict
        # dtype promotion rejects; the model's own math stays under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, model)
        model = optax.apply_updates(model, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return model, opt_state, {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite}

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the objective says what to minimise).

    Attributes:
      num_steps: optimizer steps in total (a resumed run counts from its checkpoint).
      batch_size: examples per step (must not exceed the training set), or None for the whole
        training set in every step (full batch, whatever its size).
      learning_rate: optimizer step size.
      optimizer: "adam", "adamw" or "sgd" (optax).
      seed: one integer from which initial weights, batch order and noise keys derive.
      log_every: steps between metric records.
      eval_every: steps between held-out evaluations (0: only at the end).
      checkpoint_every: steps between checkpoints in the workdir (0: only at the end).
      keep_checkpoints: how many of the latest checkpoints to keep.
      lr_schedule: "constant", or "cosine" (decays from learning_rate to 0 over num_steps; helps
        slow directions converge, e.g. near-equal eigenvalues in the linear AE's PCA subspace).
      data_parallel: shard each batch over all local devices (parameters replicated).
      progress: show a progress bar.
    """

    num_steps: int = 2000
    batch_size: int | None = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    lr_schedule: str = "constant"
    data_parallel: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "log_every", "keep_checkpoints"):
            if not (name == "batch_size" and self.batch_size is None):
                _checks.check_positive_int(name, getattr(self, name))
        for name in ("eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        _checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        lr = self.learning_rate
        if not (isinstance(lr, int | float) and lr > 0 and lr < float("inf")):
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer named by `config.optimizer`, with `config.lr_schedule`."""
    lr = config.learning_rate
    if config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    return {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[config.optimizer](lr)


class TrainingDiverged(FloatingPointError):
    """Raised when the loss or a gradient becomes NaN/inf; says at which step and which term."""


@dataclasses.dataclass
class FitResult:
    model: object
    opt_state: object
    step: int
    history: list[dict]
    start_step: int = 0  # the step training started from (> 0 when resumed from a checkpoint)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so resumes match."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_at(x: np.ndarray, step: int, *, batch_size: int, seed: int) -> np.ndarray:
    """The batch of global step `step` (drop-remainder epochs), a pure function of its inputs."""
    per_epoch = x.shape[0] // batch_size
    epoch, i = divmod(step, per_epoch)
    idx = epoch_order(seed, epoch, x.shape[0])[i * batch_size : (i + 1) * batch_size]
    return x[idx]


def _nonfinite_terms(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if k != "finite" and not np.isfinite(float(v))]


def make_eval_step(objective: Objective) -> Callable:
    """Builds `eval_step(model, x) -> [B]` per-example clean reconstruction loss, jitted."""

    def eval_step(model, x):
        h = jax.vmap(model.encode)(x)
        return reconstruction(model, x, h, loss=objective.loss)

    return jax.jit(eval_step)


def evaluate_reconstruction(
    model, x: np.ndarray, objective: Objective, *, batch_size: int = 512, eval_step=None
) -> float:
    """Mean reconstruction loss of the clean inputs x [N, *input_shape] (no corruption)."""
    eval_step = eval_step or make_eval_step(objective)
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        total += float(jnp.sum(eval_step(model, jnp.asarray(x[i : i + batch_size]))))
    return total / x.shape[0]


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag checked between steps (so a checkpoint can be saved)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stop(self) -> None:
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt("training interrupted (SIGINT); checkpoint saved")
        raise SystemExit(128 + int(self.received))


def _shardings(batch_size: int):
    """(replicated, batch-sharded) NamedShardings over a 1-D mesh of all devices."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise ValueError(
            f"data_parallel=True needs batch_size divisible by the {len(devices)} devices, "
            f"got batch_size {batch_size}; use a multiple of {len(devices)}"
        )
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def _read_history(path: str, upto: int) -> list[dict]:
    """Records of metrics.jsonl up to step `upto` (later ones belong to a run that was lost)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("step", 0) <= upto]


def fit(
    model,
    objective: Objective,
    x_train: np.ndarray,
    *,
    config: TrainConfig,
    x_test: np.ndarray | None = None,
    workdir: str | None = None,
    run_config: dict | None = None,
) -> FitResult:
    """Trains `model` on `x_train` [N, *input_shape] and returns the trained model and history.

    Keys: step t uses `jax.random.fold_in(key, t)` and batch `batch_at(x, t)`, so the same seed
    gives the same run, resumed or not.

    With a `workdir`:
      - checkpoints go to WORKDIR/checkpoints every `checkpoint_every` steps and at the end
        (the last `keep_checkpoints` are kept); a call with a workdir that holds checkpoints
        resumes from the latest one and trains up to `num_steps` (a finished run does nothing);
      - every `log_every` steps the metrics are appended to WORKDIR/metrics.jsonl and written
        as TensorBoard scalars under WORKDIR/tb;
      - SIGTERM or SIGINT saves a checkpoint, then raises SystemExit(143) or KeyboardInterrupt.

    With `x_test`, the clean reconstruction loss on it is recorded as `eval_reconstruction`
    every `eval_every` steps and at the end.

    `config.data_parallel=True` shards each batch over a 1-D mesh of all devices (leading axis)
    and replicates parameters and optimizer state; the batch size must divide by the device
    count. On several hosts call `jax.distributed.initialize()` first in every process: each
    process computes the same global batch (`batch_at` is deterministic) and the mesh spans
    `jax.devices()` of all hosts.

    Args:
      model: the initial model (used as is when there is no checkpoint to resume).
      objective: what to minimise.
      x_train: training inputs [N, *input_shape].
      config: how to train.
      x_test: held-out inputs [M, *input_shape] for periodic evaluation, or None.
      workdir: directory for checkpoints and metric files, or None to keep everything in memory.
      run_config: JSON-serialisable description of the run to store with each checkpoint, or
        None to store none (`aecore.run` keeps a run's config once, in WORKDIR/config.json).

    Returns:
      `FitResult` with the final model and optimizer state, the step reached, and the history
      (one dict per logged step, including records of the resumed run's earlier part).

    Raises:
      TrainingDiverged: the loss or a gradient became NaN/inf; names the step and the terms.
        The checkpoints on disk are left as they were (the last good one stays readable).
      ValueError: bad batch size, or a checkpoint of a model of another shape.
      CheckpointError: the latest checkpoint is unreadable (never silently re-initialised).
    """
    if config.batch_size is None:  # full batch: the whole training set, whatever its size
        config = dataclasses.replace(config, batch_size=x_train.shape[0])
    if config.batch_size > x_train.shape[0]:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {x_train.shape[0]} training examples"
        )
    # Checked here, before any step: inside the jitted step the values are not concrete, and a
    # cross-entropy on data outside [0, 1] would silently run the loss to -inf.
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x is not None:
            _checks.check_finite(name, x)
            if objective.loss == "cross_entropy":
                _checks.check_unit_interval(name, x)
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"x_test examples have shape {x_test.shape[1:]}, x_train {x_train.shape[1:]}"
        )
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(model)
    start = 0
    history: list[dict] = []
    ckpt = writer = None
    metrics_path = None
    # Only what the caller asks for: a run's config lives once, beside its checkpoints
    # (aecore.run writes WORKDIR/config.json), not again in every step.
    ckpt_config = run_config or {}
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        ckpt = Checkpointer(
            os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints
        )
        if ckpt.latest_step() is not None:
            model, opt_state, start, _ = ckpt.restore(model, opt_state)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        history = _read_history(metrics_path, start)
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
    if start >= config.num_steps:
        if ckpt is not None:
            ckpt.close()
        return FitResult(
            model=model, opt_state=opt_state, step=start, history=history, start_step=start
        )

    place_batch = jnp.asarray
    if config.data_parallel:
        replicated, batch_sharding = _shardings(config.batch_size)
        model, opt_state = jax.device_put((model, opt_state), replicated)

        def place_batch(x):
            return jax.make_array_from_callback(x.shape, batch_sharding, lambda idx: x[idx])

    # donate=False: the pre-step state must survive a diverged step.
    step_fn = make_train_step(objective, optimizer, donate=False)
    eval_step = make_eval_step(objective)
    key = jax.random.key(config.seed)

    def save(step: int) -> None:
        if ckpt is not None:
            ckpt.save(step, model, opt_state, config=ckpt_config)

    if workdir is not None:
        from tensorboardX import SummaryWriter  # lazy: only runs with a workdir write events

        writer = SummaryWriter(os.path.join(workdir, "tb"))
    bar = tqdm.tqdm(
        total=config.num_steps, initial=start, disable=not config.progress, desc="train"
    )
    try:
        with _StopSignals() as signals, bar:
            for step in range(start, config.num_steps):
                x = place_batch(
                    batch_at(x_train, step, batch_size=config.batch_size, seed=config.seed)
                )
                new_model, new_opt_state, metrics = step_fn(
                    model, opt_state, x, jax.random.fold_in(key, step)
                )
                if not bool(metrics["finite"]):
                    bad = _nonfinite_terms(metrics)
                    raise TrainingDiverged(
                        f"non-finite values at step {step}: {', '.join(bad) or 'loss'}; "
                        "the last good state and checkpoints are kept (lower the learning "
                        "rate or the penalty weights)"
                    )
                model, opt_state = new_model, new_opt_state
                done = step + 1
                bar.update(1)
                last = done == config.num_steps
                log = done % config.log_every == 0 or last
                evaluate = x_test is not None and (
                    last or (config.eval_every and done % config.eval_every == 0)
                )
                if log or evaluate:
                    record = {"step": done}
                    record.update({k: float(v) for k, v in metrics.items() if k != "finite"})
                    if evaluate:
                        record["eval_reconstruction"] = evaluate_reconstruction(
                            model, x_test, objective, eval_step=eval_step
                        )
                    history.append(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})
                    if metrics_path is not None:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for k, v in record.items():
                            if k != "step":
                                writer.add_scalar(k, v, done)
                if config.checkpoint_every and done % config.checkpoint_every == 0:
                    save(done)
                if signals.received is not None:
                    save(done)
                    signals.stop()
        save(config.num_steps)
    finally:
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return FitResult(
        model=model,
        opt_state=opt_state,
        step=config.num_steps,
        history=history,
        start_step=start,
    )

"""Training: one jitted step for every variant (objective + optax), and the loop around it.

The step is pure: it takes and returns model and optimizer state, so it runs unchanged on CPU,
GPU, TPU, and on sharded inputs.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aecore import _checks, distributed, models
from aecore.checkpoint import Checkpointer
from aecore.objective import Objective, objective_with_state, reconstruction


def _check_optimizer(optimizer) -> None:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.chain("
            f"optax.clip_by_global_norm(1.0), optax.adam(1e-3))), got {optimizer!r}"
        )


def init_optimizer(optimizer: optax.GradientTransformation, model):
    """The optimizer state for `model`'s `nnx.Param` state (what the train step updates)."""
    _check_optimizer(optimizer)
    return optimizer.init(nnx.state(model, nnx.Param))


def make_train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    donate: bool = True,
    guard: bool = False,
) -> Callable:
    """Builds `step(model, opt_state, x, key) -> (model, opt_state, metrics)`, jitted once.

    Only the `nnx.Param` state is differentiated and updated; the rest (RNG keys, batch
    statistics, any other `nnx.Variable`) is carried, with the values the training-mode forward
    pass wrote (see `models.apply_batch`). `opt_state` is `init_optimizer(optimizer, model)`.

    Args:
      objective: what to minimise (loss, terms, corruption).
      optimizer: any optax.GradientTransformation (`optax.chain`, schedules, clipping, ...).
      donate: donate model and optimizer buffers to the step (in-place update on accelerators).
      guard: the step takes a fifth argument `healthy` (a boolean scalar) and returns the INPUT
        state unchanged when `healthy` is False or this step's loss or gradients are not finite;
        `metrics["finite"]` is then False and stays False when fed back as `healthy`. This is how
        `fit` keeps the last good state without reading `finite` on the host every step.

    Returns:
      The jitted step. `metrics` holds the total `loss`, each objective term, `grad_norm`, and
      `finite` (False if the loss or any gradient is NaN/inf; without `guard` the update is still
      returned, so the caller must check `finite` before keeping the new state).
    """
    _check_optimizer(optimizer)

    def step(model, opt_state, x, key):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss_fn(p):
            total, terms, updates = objective_with_state(
                nnx.merge(graphdef, p, rest), x, key, objective
            )
            return total, (terms, updates)

        (loss, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # optax raises Python floats to int32 step counts (bias correction), which strict
        # dtype promotion rejects; the model's own math stays under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            param_updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, param_updates)
        model = nnx.merge(graphdef, params, nnx.merge_state(rest, updates))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return model, opt_state, {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite}

    def guarded(model, opt_state, x, key, healthy):
        new_model, new_opt_state, metrics = step(model, opt_state, x, key)
        ok = healthy & metrics["finite"]
        model, opt_state = jax.lax.cond(
            ok, lambda: (new_model, new_opt_state), lambda: (model, opt_state)
        )
        return model, opt_state, {**metrics, "finite": ok}

    return jax.jit(guarded if guard else step, donate_argnums=(0, 1) if donate else ())


OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the objective says what to minimise).

    Attributes:
      num_steps: optimizer steps in total (a resumed run counts from its checkpoint).
      batch_size: examples per step (must not exceed the training set); None: the whole
        training set every step (full-batch). Ignored when `fit` is given an iterable of batches.
      learning_rate: optimizer step size.
      optimizer: "adam", "adamw" or "sgd" (optax), a shortcut: `fit(..., optimizer=)` takes any
        optax.GradientTransformation instead (then `learning_rate`, `optimizer` and
        `lr_schedule` are not used).
      seed: one integer from which initial weights, batch order and noise keys derive.
      log_every: steps between metric records.
      eval_every: steps between held-out evaluations (0: only at the end).
      checkpoint_every: steps between checkpoints in the workdir (0: only at the end).
      keep_checkpoints: how many of the latest checkpoints to keep.
      early_stopping: patience, in evaluations: training stops after this many held-out
        evaluations in a row without a lower `eval_reconstruction` than the best so far, and
        the result (and the final checkpoint, written at step `num_steps` so the run counts as
        finished) is the best evaluated model. 0: never stop early. Needs `eval_every` > 0 and
        `x_test`. A resumed run tracks the best from the step it resumed at.
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
    early_stopping: int = 0
    lr_schedule: str = "constant"
    data_parallel: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("num_steps", "log_every", "keep_checkpoints"):
            _checks.check_positive_int(name, getattr(self, name))
        if self.batch_size is not None:
            _checks.check_positive_int("batch_size", self.batch_size)
        for name in ("eval_every", "checkpoint_every", "early_stopping"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        _checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        lr = self.learning_rate
        if not (isinstance(lr, int | float) and lr > 0 and lr < float("inf")):
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")
        if self.early_stopping and not self.eval_every:
            raise ValueError(
                f"early_stopping={self.early_stopping} needs eval_every > 0 (evaluations to "
                "stop on), got eval_every=0"
            )


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
    best_step: int | None = None  # with early_stopping: the step of the returned (best) model


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so resumes match."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_at(
    x: np.ndarray, step: int, *, batch_size: int, seed: int, order: np.ndarray | None = None
) -> np.ndarray:
    """The batch of global step `step` (drop-remainder epochs), a pure function of its inputs.

    `order` is the step's epoch order when the caller already holds it (`fit` builds it once
    per epoch); it must equal `epoch_order(seed, epoch, len(x))`.
    """
    per_epoch = x.shape[0] // batch_size
    epoch, i = divmod(step, per_epoch)
    if order is None:
        order = epoch_order(seed, epoch, x.shape[0])
    return x[order[i * batch_size : (i + 1) * batch_size]]


def _nonfinite_terms(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if k != "finite" and not np.isfinite(float(v))]


def make_eval_step(objective: Objective) -> Callable:
    """Builds `eval_step(model, x) -> [B]` per-example clean reconstruction loss, jitted; the
    model is evaluated in eval mode (`models.eval_mode`: Dropout off, BatchNorm averages)."""

    def eval_step(model, x):
        model = models.eval_mode(model)
        h, _ = models.apply_batch(lambda m, xi: m.encode(xi), model, x)
        return reconstruction(model, x, h, loss=objective.loss)

    return jax.jit(eval_step)


def evaluate_reconstruction(
    model,
    x: np.ndarray,
    objective: Objective,
    *,
    batch_size: int = 512,
    eval_step=None,
    place: Callable | None = None,
) -> float:
    """Mean reconstruction loss of the clean inputs x [N, *input_shape] (no corruption).

    `place` puts each chunk on the devices (default `jnp.asarray`; a multi-process run
    replicates it over the global mesh).
    """
    eval_step = eval_step or make_eval_step(objective)
    place = place or jnp.asarray
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        total += float(jnp.sum(eval_step(model, place(x[i : i + batch_size]))))
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


def _shardings():
    """(replicated, batch-sharded) NamedShardings over a 1-D mesh of all devices of all hosts."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def _check_divides(batch_size: int) -> None:
    n = jax.device_count()
    if batch_size % n:
        hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise ValueError(
            f"data_parallel=True needs batch_size divisible by the {n} devices{hosts}, "
            f"got batch_size {batch_size}; use a multiple of {n}"
        )


def _host_local(tree):
    """A replicated multi-process pytree as arrays on this process's first device."""
    device = jax.local_devices()[0]

    def local(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return jax.device_put(a.addressable_data(0), device)
        return a

    return jax.tree.map(local, tree)


def _read_history(path: str, upto: int) -> list[dict]:
    """Records of metrics.jsonl up to step `upto` (later ones belong to a run that was lost)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("step", 0) <= upto]


class _ArrayBatches:
    """Batches of global steps from an array: `batch_at`, with each epoch's order built once."""

    def __init__(self, x: np.ndarray, batch_size: int, seed: int):
        self.x, self.batch_size, self.seed = x, batch_size, seed
        self.per_epoch = x.shape[0] // batch_size
        self._epoch, self._order = None, None

    def _order_of(self, step: int) -> np.ndarray:
        epoch = step // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.seed, epoch, self.x.shape[0])
        return self._order

    def __call__(self, step: int) -> np.ndarray:
        order = self._order_of(step)
        return batch_at(self.x, step, batch_size=self.batch_size, seed=self.seed, order=order)

    def rows(self, step: int) -> _Rows:
        """The batch of `step` as a lazy view: only the rows asked for are gathered."""
        i = step % self.per_epoch
        idx = self._order_of(step)[i * self.batch_size : (i + 1) * self.batch_size]
        return _Rows(self.x, idx)


class _Rows:
    """x[idx] without the copy: `make_array_from_callback` reads only this process's shards."""

    def __init__(self, x: np.ndarray, idx: np.ndarray):
        self.x, self.idx = x, idx
        self.shape = (len(idx), *x.shape[1:])

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.x[self.idx[key[0]]][(slice(None), *key[1:])]


def _is_array(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype") and not callable(data)


def _check_batch_data(name: str, x, objective: Objective) -> None:
    # Checked here, before any step: inside the jitted step the values are not concrete, and a
    # cross-entropy on data outside [0, 1] would silently run the loss to -inf.
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{name} must be examples [N, *input_shape], got shape {getattr(x, 'shape', None)}"
        )
    _checks.check_finite(name, x)
    if objective.loss == "cross_entropy":
        _checks.check_unit_interval(name, x)


def fit(
    model,
    objective: Objective,
    x_train,
    *,
    config: TrainConfig,
    optimizer: optax.GradientTransformation | None = None,
    x_test: np.ndarray | None = None,
    workdir: str | None = None,
    run_config: dict | None = None,
) -> FitResult:
    """Trains `model` (any model of the `aecore.models` protocol) and returns it with its history.

    Data: `x_train` is either an array [N, *input_shape], or an iterable of batches
    [B, *input_shape], or a callable `batches(start_step) -> iterable`. For an array, step t
    uses `batch_at(x_train, t)` (one epoch order built per epoch) and key
    `jax.random.fold_in(key, t)`: the same seed gives the same run, and a resumed run is
    bit-identical to an uninterrupted one. For an iterable, step t takes the next batch; at most
    `num_steps` are taken and training ends early (saving a checkpoint) when it is exhausted.
    Resuming restores model, optimizer state and step, then takes batches from the iterable AS
    GIVEN (aecore does not skip any); pass a callable to get the batches of the resumed step
    (bit-identical when it yields the same batches).

    Modes and state: the step differentiates `nnx.Param` state only and carries the rest (RNG
    keys, batch statistics); training runs the model in training mode (Dropout active, its keys
    derived from the step key, see `models.apply_batch`), evaluation in `models.eval_mode`.

    With a `workdir`:
      - checkpoints go to WORKDIR/checkpoints every `checkpoint_every` steps and at the end
        (the last `keep_checkpoints` are kept); a call with a workdir that holds checkpoints
        resumes from the latest one and trains up to `num_steps` (a finished run does nothing);
      - every `log_every` steps the metrics are appended to WORKDIR/metrics.jsonl and written
        as TensorBoard scalars under WORKDIR/tb;
      - SIGTERM or SIGINT saves a checkpoint, then raises SystemExit(143) or KeyboardInterrupt.

    With `x_test`, the clean reconstruction loss on it is recorded as `eval_reconstruction`
    every `eval_every` steps and at the end.

    The loop reads values on the host only at log, eval and checkpoint steps (no sync per step):
    the step is built with `guard=True`, so after a non-finite step it keeps returning the last
    good state until the loop next looks, then raises naming the first bad step.

    `config.data_parallel=True` shards each batch over a 1-D mesh of all devices (leading axis)
    and replicates parameters and optimizer state; the batch size must divide by the device
    count. On several hosts call `jax.distributed.initialize()` first in every process: each
    process computes the same global batch (`batch_at` is deterministic) and the mesh spans
    `jax.devices()` of all hosts.

    Args:
      model: the initial model (used as is when there is no checkpoint to resume).
      objective: what to minimise.
      x_train: training inputs [N, *input_shape], an iterable of batches, or a callable
        `batches(start_step)` returning one.
      config: how to train.
      optimizer: any optax.GradientTransformation; None builds `config.optimizer` by name.
      x_test: held-out inputs [M, *input_shape] for periodic evaluation, or None.
      workdir: directory for checkpoints and metric files, or None to keep everything in memory.
      run_config: JSON-serialisable description of the run to store with each checkpoint, or
        None to store none (`aecore.run` keeps a run's config once, in WORKDIR/config.json).

    Returns:
      `FitResult` with the final model and optimizer state, the step reached, and the history
      (one dict per logged step, including records of the resumed run's earlier part).

    Raises:
      TrainingDiverged: the loss or a gradient became NaN/inf; names the step and the terms.
        The returned state is never kept: the checkpoints on disk are left as they were (the
        last good one stays readable).
      ValueError / TypeError: bad data, batch size, optimizer or model (one line, before any
        side effect), or a checkpoint of a model of another shape.
      CheckpointError: the latest checkpoint is unreadable (never silently re-initialised).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an aecore.train.TrainConfig, got {type(config).__name__}")
    multiprocess = jax.process_count() > 1
    if multiprocess and not config.data_parallel:  # one model over all processes' devices
        config = dataclasses.replace(config, data_parallel=True)
    lead = jax.process_index() == 0  # the one process that logs, draws a bar and writes files
    if optimizer is None:
        optimizer = make_optimizer(config)
    _check_optimizer(optimizer)
    batches = stream = None
    if _is_array(x_train):
        x_train = np.asarray(x_train)
        _check_batch_data("x_train", x_train, objective)
        batch_size = x_train.shape[0] if config.batch_size is None else config.batch_size
        if batch_size > x_train.shape[0]:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {x_train.shape[0]} training examples"
            )
        batches = _ArrayBatches(x_train, batch_size, config.seed)
        if config.data_parallel:
            _check_divides(batch_size)
        example = x_train[:1]
    else:
        if not (callable(x_train) or hasattr(x_train, "__iter__")):
            raise TypeError(
                "x_train must be an array [N, *input_shape], an iterable of batches or a "
                f"callable batches(start_step), got {type(x_train).__name__}"
            )
        example = None
    if config.early_stopping and x_test is None:
        raise ValueError(
            f"early_stopping={config.early_stopping} needs x_test (held-out data to stop on)"
        )
    if x_test is not None:
        x_test = np.asarray(x_test)
        _check_batch_data("x_test", x_test, objective)
    if example is not None and x_test is not None and x_test.shape[1:] != example.shape[1:]:
        raise ValueError(
            f"x_test examples have shape {x_test.shape[1:]}, x_train {example.shape[1:]}"
        )
    if example is not None:
        models.check_protocol(model, example.shape[1:], example.dtype)
    opt_state = init_optimizer(optimizer, model)
    if config.data_parallel:
        # Placed before any restore, so the checkpoint is read straight into the global layout.
        replicated, batch_sharding = _shardings()
        model, opt_state = jax.device_put((model, opt_state), replicated)
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
        if multiprocess:  # everyone has read the log before the lead rewrites it
            multihost_utils.sync_global_devices("aecore_history_read")
        if lead:
            with open(metrics_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in history)
    if start >= config.num_steps:
        if ckpt is not None:
            ckpt.close()
        return FitResult(
            model=model, opt_state=opt_state, step=start, history=history, start_step=start
        )
    if batches is None:  # an iterable: check its first batch before any step
        source = x_train(start) if callable(x_train) else x_train
        stream = iter(source)
        try:
            first = next(stream)
        except StopIteration:
            raise ValueError("x_train yielded no batches") from None
        first = np.asarray(first)
        _check_batch_data("the first batch of x_train", first, objective)
        if x_test is not None and x_test.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"x_test examples have shape {x_test.shape[1:]}, x_train batches {first.shape[1:]}"
            )
        models.check_protocol(model, first.shape[1:], first.dtype)
        stream = itertools.chain([first], stream)

    place_batch = jnp.asarray
    place_eval = None
    if config.data_parallel:
        if batches is None:
            _check_divides(first.shape[0])

        def place_batch(x):
            # Called for this process's devices only: each process gathers its own rows.
            return jax.make_array_from_callback(x.shape, batch_sharding, lambda idx: x[idx])

        if multiprocess:

            def place_eval(x):  # every process holds x_test: replicate it over the mesh
                return jax.device_put(x, replicated)

    # donate=False: the caller's model stays usable; guard=True keeps the last good state.
    step_fn = make_train_step(objective, optimizer, donate=False, guard=True)
    eval_step = make_eval_step(objective)
    key = jax.random.key(config.seed)
    healthy = jnp.asarray(True)
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet looked at

    def check_pending() -> None:
        """Reads the pending `finite` flags (one host sync) and raises at the first bad step."""
        if not pending:
            return
        flags = jax.device_get([m["finite"] for _, m in pending])
        for (t, m), ok in zip(pending, flags, strict=True):
            if not ok:
                bad = _nonfinite_terms(m)
                raise TrainingDiverged(
                    f"non-finite values at step {t}: {', '.join(bad) or 'loss'}; "
                    "the last good state and checkpoints are kept (lower the learning "
                    "rate or the penalty weights)"
                )
        pending.clear()

    def save(step: int) -> None:
        if ckpt is not None:
            ckpt.save(step, model, opt_state, config=ckpt_config)

    if workdir is not None and lead:
        from tensorboardX import SummaryWriter  # lazy: only runs with a workdir write events

        writer = SummaryWriter(os.path.join(workdir, "tb"))
    bar = tqdm.tqdm(
        total=config.num_steps, initial=start, disable=not (config.progress and lead), desc="train"
    )
    done = start
    # Early stopping: the best evaluated state (donate=False: held arrays stay valid).
    best = {"loss": float("inf"), "step": None, "state": None, "waited": 0}
    try:
        with _StopSignals() as signals, bar:
            for step in range(start, config.num_steps):
                if batches is not None:
                    xb = batches.rows(step) if config.data_parallel else batches(step)
                else:
                    xb = next(stream, None)
                    if xb is None:
                        break
                model, opt_state, metrics = step_fn(
                    model, opt_state, place_batch(xb), jax.random.fold_in(key, step), healthy
                )
                healthy = metrics["finite"]
                pending.append((step, metrics))
                done = step + 1
                bar.update(1)
                last = done == config.num_steps
                log = done % config.log_every == 0 or last
                evaluate = x_test is not None and (
                    last or (config.eval_every and done % config.eval_every == 0)
                )
                checkpoint_now = bool(config.checkpoint_every) and (
                    done % config.checkpoint_every == 0
                )
                if log or evaluate or checkpoint_now or signals.received is not None:
                    check_pending()
                if log or evaluate:
                    record = {"step": done}
                    values = jax.device_get({k: v for k, v in metrics.items() if k != "finite"})
                    record.update({k: float(v) for k, v in values.items()})
                    if evaluate:
                        record["eval_reconstruction"] = evaluate_reconstruction(
                            model, x_test, objective, eval_step=eval_step, place=place_eval
                        )
                    history.append(record)
                    if evaluate and config.early_stopping:
                        if record["eval_reconstruction"] < best["loss"]:
                            best.update(
                                loss=record["eval_reconstruction"],
                                step=done,
                                state=(model, opt_state),
                                waited=0,
                            )
                        else:
                            best["waited"] += 1
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})
                    if metrics_path is not None and lead:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for k, v in record.items():
                            if k != "step":
                                writer.add_scalar(k, v, done)
                if checkpoint_now:
                    save(done)
                if signals.received is not None:
                    save(done)
                    signals.stop()
                if best["waited"] >= config.early_stopping > 0:
                    break
        check_pending()
        stopped = best["waited"] >= config.early_stopping > 0
        if best["state"] is not None and (stopped or done == config.num_steps):
            # Finished (stopped or at num_steps): keep the best model, as a finished run.
            model, opt_state = best["state"]
            done = config.num_steps
        save(done)
    except jax.errors.JaxRuntimeError as e:
        if not multiprocess:
            raise
        # A collective failed: a peer died. Closing the checkpointer would wait for it forever.
        ckpt = None
        where = os.path.join(workdir, "checkpoints") if workdir is not None else None
        raise distributed.peer_lost(done, e, where) from None
    finally:
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    if multiprocess:  # hand back arrays this process can use on its own (evaluate, plot)
        model, opt_state = _host_local((model, opt_state))
    return FitResult(
        model=model,
        opt_state=opt_state,
        step=done,
        history=history,
        start_step=start,
        best_step=best["step"],
    )

"""`fit`: a short loop around the jitted step (`step.py`), over a `BatchSource`, writing through
a `RunWriter` (`rundir.py`); the NaN guard and early stopping are small helpers beside it.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from aecore import distributed
from aecore.models import Model
from aecore.objective import Objective
from aecore.train.batches import BatchSource, Placement
from aecore.train.rundir import RunWriter
from aecore.train.step import (
    TrainConfig,
    TrainingDiverged,
    _check_optimizer,
    evaluate_reconstruction,
    init_optimizer,
    make_eval_step,
    make_optimizer,
    make_train_step,
)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the final model and optimizer state, the step reached, the history."""

    model: object
    opt_state: object
    step: int
    history: list[dict]
    start_step: int = 0  # the step training started from (> 0 when resumed from a checkpoint)
    best_step: int | None = None  # with early_stopping: the step of the returned (best) model


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag checked between steps (so a checkpoint can be saved)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

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
        """Raises for the signal received, if any: SystemExit(128 + signum) or KeyboardInterrupt."""
        if self.received is None:
            return
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt("training interrupted (SIGINT); checkpoint saved")
        raise SystemExit(128 + int(self.received))


class _Guard:
    """The steps whose `finite` flag the host has not read yet: read together, in one sync."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []  # (step, device metrics)

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def check(self) -> None:
        """Reads the pending `finite` flags (one host sync) and raises at the first bad step."""
        if not self.pending:
            return
        flags = jax.device_get([m["finite"] for _, m in self.pending])
        for (t, m), ok in zip(self.pending, flags, strict=True):
            if not ok:
                bad = [k for k, v in m.items() if k != "finite" and not np.isfinite(float(v))]
                raise TrainingDiverged(
                    f"non-finite values at step {t}: {', '.join(bad) or 'loss'}; "
                    "the last good state and checkpoints are kept (lower the learning "
                    "rate or the penalty weights)"
                )
        self.pending.clear()


class _EarlyStopping:
    """The best evaluated state so far, and whether `patience` evaluations passed without one."""

    def __init__(self, patience: int):
        self.patience, self.waited = patience, 0
        self.loss, self.state = float("inf"), None
        self.step: int | None = None

    def update(self, record: dict[str, float], state) -> None:
        """Takes one logged record; those with an `eval_reconstruction` count."""
        if not self.patience or "eval_reconstruction" not in record:
            return
        loss = record["eval_reconstruction"]
        if loss < self.loss:  # donate=False in `fit`: the held arrays stay valid
            self.loss, self.step, self.state, self.waited = loss, int(record["step"]), state, 0
        else:
            self.waited += 1

    def final(self, model, opt_state, done: int, num_steps: int):
        """(model, opt_state, step) to keep: the best, as a finished run, once training ended
        (stopped early or at `num_steps`); else the state reached."""
        if self.state is not None and (self.stopped or done == num_steps):
            return *self.state, num_steps
        return model, opt_state, done

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.waited >= self.patience


def _settle(config, optimizer) -> tuple[TrainConfig, optax.GradientTransformation]:
    """The config as the run uses it (several processes: data-parallel) and the optimizer."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an aecore.train.TrainConfig, got {type(config).__name__}")
    if jax.process_count() > 1 and not config.data_parallel:  # one model over all processes
        config = dataclasses.replace(config, data_parallel=True)
    optimizer = make_optimizer(config) if optimizer is None else optimizer
    _check_optimizer(optimizer)
    return config, optimizer


def _due(config: TrainConfig, done: int, evaluates: bool) -> tuple[bool, bool, bool]:
    """(log, evaluate, checkpoint): what is due once `done` steps are done."""
    last = done == config.num_steps
    log = done % config.log_every == 0 or last
    evaluate = evaluates and (last or bool(config.eval_every) and done % config.eval_every == 0)
    checkpoint = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
    return log, evaluate, checkpoint


def _evaluator(objective: Objective, x_test, place: Placement) -> Callable | None:
    """model -> the clean reconstruction loss on `x_test` (one jitted eval step), or None."""
    if x_test is None:
        return None
    eval_step = make_eval_step(objective)
    return lambda model: evaluate_reconstruction(
        model, x_test, objective, eval_step=eval_step, place=place.eval_batch
    )


def _record(done: int, metrics: dict, model, evaluate: Callable | None) -> dict[str, float]:
    values = jax.device_get({k: v for k, v in metrics.items() if k != "finite"})
    record = {"step": done, **{k: float(v) for k, v in values.items()}}
    if evaluate is not None:
        record["eval_reconstruction"] = evaluate(model)
    return record


def _progress_bar(config: TrainConfig, start: int, *, show: bool) -> tqdm.tqdm:
    show = show and config.progress
    return tqdm.tqdm(total=config.num_steps, initial=start, disable=not show, desc="train")


def _publish(record: dict[str, float], history: list[dict], out: RunWriter, bar) -> None:
    history.append(record)
    out.record(record)
    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})


def fit(
    model: Model,
    objective: Objective,
    x_train: np.ndarray | jax.Array | Iterable | Callable[[int], Iterable],
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
        (the last `keep_checkpoints` are kept), each with a digest of its files; a call with a
        workdir that holds checkpoints resumes from the newest intact one and trains up to
        `num_steps` (a finished run does nothing);
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
      CheckpointError: no checkpoint is intact (never silently re-initialised); damaged
        newer steps are skipped with a warning and kept as `<step>.damaged`.
      StorageError: a checkpoint or metrics.jsonl could not be written (disk full, ...):
        names the file and the newest checkpoint kept.

    Examples:
      >>> import numpy as np
      >>> import aecore
      >>> x = np.random.default_rng(0).uniform(size=(64, 8)).astype(np.float32)
      >>> model = aecore.make_autoencoder((8,), hidden=(4,), key=0)
      >>> config = aecore.TrainConfig(
      ...     num_steps=20, batch_size=16, learning_rate=1e-2, log_every=10, progress=False
      ... )
      >>> result = aecore.fit(model, aecore.Objective(loss="cross_entropy"), x, config=config)
      >>> result.step, len(result.history)  # a record every 10 steps
      (20, 2)
      >>> bool(result.history[-1]["loss"] < result.history[0]["loss"])
      True
      >>> result.model.encode(x[0]).shape
      (4,)
    """
    config, optimizer = _settle(config, optimizer)
    source = BatchSource(x_train, config=config, objective=objective)
    x_test = source.check(model, x_test, early_stopping=config.early_stopping)
    place = Placement(config.data_parallel)
    model, opt_state = place.state((model, init_optimizer(optimizer, model)))
    out = RunWriter(workdir, keep=config.keep_checkpoints, config=run_config)
    model, opt_state, start, history = out.resume(model, opt_state)
    done, best, guard = start, _EarlyStopping(config.early_stopping), _Guard()
    try:
        if start >= config.num_steps:  # a finished run does nothing
            return FitResult(model, opt_state, start, history, start_step=start)
        steps = source.steps(start, config.num_steps, model, x_test)
        # donate=False: the caller's model stays usable; guard=True keeps the last good state.
        step_fn = make_train_step(objective, optimizer, donate=False, guard=True)
        evaluate = _evaluator(objective, x_test, place)
        key, healthy = jax.random.key(config.seed), jnp.asarray(True)
        bar = _progress_bar(config, start, show=out.lead)
        with _StopSignals() as signals, bar:
            for step, xb in steps:
                model, opt_state, metrics = step_fn(
                    model, opt_state, place.batch(xb), jax.random.fold_in(key, step), healthy
                )
                healthy, done = metrics["finite"], step + 1
                guard.add(step, metrics)
                bar.update(1)
                log, evaluate_now, save_now = _due(config, done, evaluate is not None)
                if log or evaluate_now or save_now or signals.received is not None:
                    guard.check()
                if log or evaluate_now:
                    record = _record(done, metrics, model, evaluate if evaluate_now else None)
                    _publish(record, history, out, bar)
                    best.update(record, (model, opt_state))
                if save_now or signals.received is not None:
                    out.save(done, model, opt_state)
                    signals.stop()  # only when one was received
                if best.stopped:
                    break
        guard.check()
        model, opt_state, done = best.final(model, opt_state, done, config.num_steps)
        out.save(done, model, opt_state)
    except jax.errors.JaxRuntimeError as e:
        if not place.multiprocess:
            raise
        out.abandon()  # a collective failed: a peer died
        raise distributed.peer_lost(done, e, out.checkpoint_dir) from None
    finally:
        out.close()
    model, opt_state = place.local((model, opt_state))  # arrays this process can use alone
    return FitResult(model, opt_state, done, history, start_step=start, best_step=best.step)

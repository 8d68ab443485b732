"""One jitted train step for every variant (objective + optax), its config and the eval step.

The step is pure: it takes and returns model and optimizer state, so it runs unchanged on CPU,
GPU, TPU, and on sharded inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aecore import _checks, models
from aecore.objective import Objective, objective_with_state, reconstruction


def _check_optimizer(optimizer) -> None:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.chain("
            f"optax.clip_by_global_norm(1.0), optax.adam(1e-3))), got {optimizer!r}"
        )


def init_optimizer(optimizer: optax.GradientTransformation, model: models.Model) -> optax.OptState:
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

    An optimizer that takes extra arguments (`optax.GradientTransformationExtraArgs`, e.g.
    `optax.lbfgs` and other line searches) also gets `value` (this step's loss), `grad` and
    `value_fn` (params -> the loss on the same batch and key, for the line search); those that
    do not use them ignore them (optax's convention).

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

    Examples:
      >>> import jax, optax
      >>> import aecore
      >>> from aecore.train import init_optimizer, make_train_step
      >>> model = aecore.make_autoencoder((8,), hidden=(4,), key=0)
      >>> optimizer = optax.adam(1e-2)
      >>> step = make_train_step(aecore.Objective(loss="cross_entropy", contractive=0.1), optimizer)
      >>> opt_state = init_optimizer(optimizer, model)
      >>> x = jax.random.uniform(jax.random.key(1), (16, 8))
      >>> model, opt_state, metrics = step(model, opt_state, x, jax.random.key(2))
      >>> sorted(metrics)
      ['contractive', 'finite', 'grad_norm', 'loss', 'reconstruction']
      >>> bool(metrics["finite"])
      True
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
        extra = {}
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            extra = {"value": loss, "grad": grads, "value_fn": lambda p: loss_fn(p)[0]}
        # optax raises Python floats to int32 step counts (bias correction), which strict
        # dtype promotion rejects; the model's own math stays under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            param_updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
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


OPTIMIZERS = ("adam", "sgd", "adamw", "lbfgs")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the objective says what to minimise).

    Attributes:
      num_steps: optimizer steps in total (a resumed run counts from its checkpoint).
      batch_size: examples per step (must not exceed the training set); None: the whole
        training set every step (full-batch). Ignored when `fit` is given an iterable of batches.
      learning_rate: optimizer step size.
      optimizer: "adam", "adamw" or "sgd" (optax), or "lbfgs" (`optax.lbfgs`: quasi-Newton
        with a zoom line search that picks each step's length, so `learning_rate` is not used
        and `lr_schedule` must be "constant"; full batch only, batch_size None). A shortcut:
        `fit(..., optimizer=)` takes any optax.GradientTransformation instead (then
        `learning_rate`, `optimizer` and `lr_schedule` are not used).
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
            _checks.check_int(name, getattr(self, name))
        _checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        lr = self.learning_rate
        if not (isinstance(lr, int | float) and lr > 0 and lr < float("inf")):
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")
        if self.optimizer == "lbfgs" and self.batch_size is not None:
            raise ValueError(
                f"optimizer='lbfgs' needs the full batch (batch_size=None), got batch_size="
                f"{self.batch_size}: a line search on a new minibatch each step is not one; "
                "use optimizer='adam' for minibatches"
            )
        if self.optimizer == "lbfgs" and self.lr_schedule != "constant":
            raise ValueError(
                f"optimizer='lbfgs' picks its step lengths by line search, so lr_schedule must "
                f"be 'constant', got {self.lr_schedule!r}"
            )
        if self.early_stopping and not self.eval_every:
            raise ValueError(
                f"early_stopping={self.early_stopping} needs eval_every > 0 (evaluations to "
                "stop on), got eval_every=0"
            )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer named by `config.optimizer`, with `config.lr_schedule`."""
    if config.optimizer == "lbfgs":
        return optax.lbfgs()
    lr = config.learning_rate
    if config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    return {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[config.optimizer](lr)


class TrainingDiverged(FloatingPointError):
    """Raised when the loss or a gradient becomes NaN/inf; says at which step and which term."""


def make_eval_step(objective: Objective) -> Callable:
    """Builds `eval_step(model, x) -> [B]` per-example clean reconstruction loss, jitted; the
    model is evaluated in eval mode (`models.eval_mode`: Dropout off, BatchNorm averages)."""

    def eval_step(model, x):
        model = models.eval_mode(model)
        h, _ = models.apply_batch(lambda m, xi: m.encode(xi), model, x)
        return reconstruction(model, x, h, loss=objective.loss)

    return jax.jit(eval_step)


def evaluate_reconstruction(
    model: models.Model,
    x: np.ndarray,
    objective: Objective,
    *,
    batch_size: int = 512,
    eval_step: Callable | None = None,
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

"""Training: one jitted step for every variant (objective + optax), and the loop around it.

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

from aecore import _checks
from aecore.objective import Objective, objective_terms


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
        updates, opt_state = optimizer.update(grads, opt_state, model)
        model = optax.apply_updates(model, updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return model, opt_state, {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite}

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


OPTIMIZERS = ("adam", "sgd", "adamw")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the objective says what to minimise).

    Attributes:
      num_steps: optimizer steps in total (a resumed run counts from its checkpoint).
      batch_size: examples per step (must not exceed the training set).
      learning_rate: optimizer step size.
      optimizer: "adam", "adamw" or "sgd" (optax).
      seed: one integer from which initial weights, batch order and noise keys derive.
      log_every: steps between metric records.
      eval_every: steps between held-out evaluations (0: only at the end).
      checkpoint_every: steps between checkpoints in the workdir (0: only at the end).
      data_parallel: shard each batch over all local devices (parameters replicated).
      progress: show a progress bar.
    """

    num_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    data_parallel: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "log_every"):
            _checks.check_positive_int(name, getattr(self, name))
        for name in ("eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        _checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        lr = self.learning_rate
        if not (isinstance(lr, int | float) and lr > 0 and lr < float("inf")):
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer named by `config.optimizer`."""
    return {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}[config.optimizer](
        config.learning_rate
    )


class TrainingDiverged(FloatingPointError):
    """Raised when the loss or a gradient becomes NaN/inf; says at which step and which term."""


@dataclasses.dataclass
class FitResult:
    model: object
    opt_state: object
    step: int
    history: list[dict]


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


def fit(
    model,
    objective: Objective,
    x_train: np.ndarray,
    *,
    config: TrainConfig,
    x_test: np.ndarray | None = None,
    workdir: str | None = None,
) -> FitResult:
    """Trains `model` on `x_train` [N, *input_shape] and returns the trained model and history.

    Keys: step t uses `jax.random.fold_in(key, t)` and batch `batch_at(x, t)`, so the same seed
    gives the same run, resumed or not. Stops with `TrainingDiverged` on a non-finite loss or
    gradient, keeping the last good state.
    """
    del workdir  # checkpoints and metric files: see the training issue
    if config.batch_size > x_train.shape[0]:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {x_train.shape[0]} training examples"
        )
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(model)
    step_fn = make_train_step(objective, optimizer)
    key = jax.random.key(config.seed)
    history: list[dict] = []
    for step in range(config.num_steps):
        x = jnp.asarray(batch_at(x_train, step, batch_size=config.batch_size, seed=config.seed))
        new_model, new_opt_state, metrics = step_fn(
            model, opt_state, x, jax.random.fold_in(key, step)
        )
        if not bool(metrics["finite"]):
            bad = _nonfinite_terms(metrics)
            raise TrainingDiverged(
                f"non-finite values at step {step}: {', '.join(bad) or 'loss'}; "
                "the last good state is kept (lower the learning rate or the penalty weights)"
            )
        model, opt_state = new_model, new_opt_state
        if (step + 1) % config.log_every == 0 or step + 1 == config.num_steps:
            history.append({"step": step + 1, **{k: float(v) for k, v in metrics.items()}})
    return FitResult(model=model, opt_state=opt_state, step=config.num_steps, history=history)

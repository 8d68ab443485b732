"""The training loop's own cost: `fit` against a bare loop of the same jitted step.

On the main job (aecore/configs/contractive.py, digits, 64 -> 64 CAE), both run the step
that `fit` builds (`make_train_step(..., guard=True)`) on the same batches, compiled outside the
timing (for fit: a full call minus a one-step call); repeats alternate the two and report median
steps/s and the overhead ratio. Run:
`python -m benchmarks.fit_overhead [--steps 2000] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from aecore import run as aerun
from aecore import train
from aecore.configs import contractive
from aecore.train.batches import _ArrayBatches


def _setup():
    config = aerun.RunConfig.of(contractive.get_config())
    ds, _ = aerun.load_data(config.data)
    model = aerun.build_model(config, ds.x_train.shape[1:])
    return config, ds, model, config.objective, config.train


def bare_loop(model, objective, x, config: train.TrainConfig) -> float:
    """Seconds for `config.num_steps` steps of the same guarded jitted step, nothing else."""
    optimizer = train.make_optimizer(config)
    step = train.make_train_step(objective, optimizer, donate=False, guard=True)
    batches = _ArrayBatches(x, config.batch_size, config.seed)
    opt_state = train.init_optimizer(optimizer, model)
    key, healthy = jax.random.key(config.seed), jnp.asarray(True)
    m, o, metrics = step(model, opt_state, jnp.asarray(batches(0)), key, healthy)  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for t in range(config.num_steps):
        m, o, metrics = step(m, o, jnp.asarray(batches(t)), jax.random.fold_in(key, t), healthy)
        healthy = metrics["finite"]
    jax.block_until_ready((m, metrics))
    return time.perf_counter() - t0


def _fit_seconds(model, objective, x, config: train.TrainConfig) -> float:
    t0 = time.perf_counter()
    result = train.fit(model, objective, x, config=config)
    jax.block_until_ready(result.model)
    return time.perf_counter() - t0


def fit_loop(model, objective, x, config: train.TrainConfig) -> float:
    """Seconds of `fit` for `config.num_steps - 1` steps: a full call minus a 1-step call.

    Each call builds and compiles its step once; the difference removes that one-off cost (and
    the setup), leaving the loop's per-step cost, comparable to `bare_loop`.
    """
    one = _fit_seconds(model, objective, x, dataclasses.replace(config, num_steps=1))
    full = _fit_seconds(model, objective, x, config)
    return full - one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _, ds, model, objective, config = _setup()
    config = dataclasses.replace(
        config, num_steps=args.steps, progress=False, checkpoint_every=0, eval_every=0
    )
    bare, fitted = [], []
    for _ in range(args.repeats):
        bare.append(args.steps / bare_loop(model, objective, ds.x_train, config))
        fitted.append((args.steps - 1) / fit_loop(model, objective, ds.x_train, config))
    b, f = statistics.median(bare), statistics.median(fitted)
    print(
        f"batch {config.batch_size}, {args.steps} steps, log_every {config.log_every}, "
        f"{args.repeats} repeats"
    )
    print(f"bare loop: {b:.0f} steps/s (runs {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"fit:       {f:.0f} steps/s (runs {', '.join(f'{v:.0f}' for v in fitted)})")
    print(f"fit overhead: {100 * (b / f - 1):.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()

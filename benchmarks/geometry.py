"""Cost of the decoder-geometry and reconstruction-Jacobian terms per train step, against a plain
AE step, their autodiff routes and the anchors' estimators (IRVAE's 1-probe distortion).

Run: `python -m benchmarks.geometry [--quick] [--out PATH]`. Every row times the library's own
jitted step (`aecore.train.make_train_step`) with one term, routes interleaved, medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from aecore import jacobian, make_autoencoder, regularizers
from aecore.objective import Objective
from aecore.regularizers import Term
from aecore.train import init_optimizer, make_train_step

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
WEIGHT = 0.01


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmarked autoencoder: an MLP `make_autoencoder((d,), hidden=hidden)` and the
    anchor whose model shape it stands for."""

    d: int
    hidden: tuple[int, ...]
    anchor: str

    def build(self):
        return make_autoencoder((self.d,), hidden=self.hidden, key=0)


SHAPES = {
    "rcae-784-32": Shape(784, (32,), "rCAE, Alain & Bengio 2014 (issue's d = 784, k = 32)"),
    "rcae-784-256-32": Shape(784, (256, 32), "rCAE, a deeper encoder/decoder"),
    "irvae-784-256-2": Shape(784, (256, 2), "IRVAE / Geometric AE, MNIST with k = 2"),
    "irvae-784-256-16": Shape(784, (256, 16), "IRVAE, MNIST with k = 16"),
}
QUICK_SHAPES = {"tiny-16-8-3": Shape(16, (8, 3), "smoke test")}


def _slogdet_g(model, x, x_tilde, h, key):
    """Geometric AE's route: log det of G = JᵀJ (J by jacfwd), by slogdet of G."""
    jac = jax.vmap(jax.jacfwd(lambda zi: model.decode(zi).reshape(-1)))(h)
    g = jnp.einsum("bdk,bdl->bkl", jac, jac)
    return jnp.var(jnp.linalg.slogdet(g)[1])


def _rcae_autodiff(mode: str) -> Callable:
    def fn(model, x, x_tilde, h, key):
        return jacobian.reconstruction_frobenius_sq(model.encode, model.decode, x, mode=mode)

    return fn


def _distortion_jacrev(model, x, x_tilde, h, key):
    """The exact distortion with J_g by reverse mode (d pullbacks), IRVAE's mixup included."""
    z = regularizers.mixup_codes(jax.random.split(key)[0], h)
    jac = jax.vmap(jax.jacrev(lambda zi: model.decode(zi).reshape(-1)))(z)
    return jacobian.relaxed_distortion(jnp.einsum("bdk,bdl->bkl", jac, jac))


def objectives() -> dict[str, tuple[str, Objective]]:
    """(quantity, objective) of every benchmarked route."""
    w = WEIGHT

    def extra(name, fn):
        return Objective(extra_terms=(Term(name, fn, w),))

    return {
        "plain": ("-", Objective()),
        "rcae/auto": ("rcae", Objective(reconstruction_contractive=w)),
        "rcae/factored": ("rcae", extra("rcae", _rcae_autodiff("factored"))),
        "rcae/jacrev": ("rcae", extra("rcae", _rcae_autodiff("jacrev"))),
        "rcae/jacfwd": ("rcae", extra("rcae", _rcae_autodiff("jacfwd"))),
        "rcae/hutchinson-1": (
            "rcae",
            Objective(reconstruction_contractive=w, reconstruction_contractive_probes=1),
        ),
        "distortion/exact": ("distortion", Objective(distortion=w)),
        "distortion/jacrev": ("distortion", extra("distortion", _distortion_jacrev)),
        "distortion/irvae-1probe": ("distortion", Objective(distortion=w, distortion_probes=1)),
        "isometry/exact": ("isometry", Objective(isometry=w)),
        "logdet_var/qr": ("logdet_var", Objective(logdet_variance=w)),
        "logdet_var/slogdet_G": ("logdet_var", extra("logdet_variance", _slogdet_g)),
    }


def run_shape(
    name: str,
    shape: Shape,
    *,
    batch: int,
    reps: int,
    routes: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Times each route's train step round-robin on one shape; one record per route."""
    x = jax.random.uniform(jax.random.key(0), (batch, shape.d), jnp.float32)
    optimizer = optax.adam(1e-3)
    table = {r: v for r, v in objectives().items() if routes is None or r in routes}
    runners, records = {}, {}
    for route, (quantity, objective) in table.items():
        step = make_train_step(objective, optimizer, donate=False)
        model = shape.build()
        state = (model, init_optimizer(optimizer, model))
        key = jax.random.key(1)
        t0 = time.perf_counter()
        out = step(*state, x, key)
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t0
        term = {k: float(v) for k, v in out[2].items() if k not in ("loss", "finite", "grad_norm")}
        runners[route] = (step, state, key)
        records[route] = {
            "model": name,  # the key every results file names its rows by
            "anchor": shape.anchor,
            "d": shape.d,
            "k": shape.hidden[-1],
            "route": route,
            "quantity": quantity,
            "batch": batch,
            "first_step_s": compile_s,
            "terms": term,
        }
    times = {r: [] for r in runners}
    order = list(runners)
    for i in range(reps):  # round-robin, rotated: machine noise hits every route alike
        for route in order[i % len(order) :] + order[: i % len(order)]:
            step, state, key = runners[route]
            t0 = time.perf_counter()
            jax.block_until_ready(step(*state, x, key))
            times[route].append(time.perf_counter() - t0)
    plain = statistics.median(times["plain"]) if "plain" in times else None
    for route, rec in records.items():
        ms = statistics.median(times[route]) * 1e3
        rec.update(ms_per_step=ms, reps=reps, ratio_to_plain=ms / (plain * 1e3) if plain else None)
    for rec in records.values():  # each route against the exact route of its quantity
        own = {"rcae": "rcae/auto", "distortion": "distortion/exact", "logdet_var": "logdet_var/qr"}
        ref = records.get(own.get(rec["quantity"], ""))
        rec["ratio_to_exact"] = rec["ms_per_step"] / ref["ms_per_step"] if ref else None
    out = list(records.values())
    for r in out:
        log(
            f"  {name:<18} {r['route']:<24} {r['ms_per_step']:>9.2f} ms  x{r['ratio_to_plain']:.2f}"
        )
    return out


def format_table(records: Sequence[dict]) -> str:
    lines = [
        f"{'shape':<18} {'route':<24} {'ms/step':>9} {'× plain':>8} {'× exact':>8}",
        "-" * 71,
    ]
    for r in records:
        ratio = r["ratio_to_exact"]
        lines.append(
            f"{r['model']:<18} {r['route']:<24} {r['ms_per_step']:>9.2f} "
            f"{r['ratio_to_plain']:>8.2f} {'' if ratio is None else f'{ratio:.2f}':>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.geometry", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one tiny shape, 2 reps (smoke test)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--shapes", default=None, help="comma-separated names of SHAPES")
    args = p.parse_args(argv)
    # optax.adam mixes a Python float with an int32 count; run under standard promotion.
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = {n: SHAPES[n] for n in args.shapes.split(",")}
    reps = 2 if args.quick else args.reps
    batch = 8 if args.quick else args.batch
    records = []
    for name, shape in shapes.items():
        records += run_shape(name, shape, batch=batch, reps=reps)
    print(format_table(records))
    default = "cpu-2core-geometry-quick.json" if args.quick else "cpu-2core-geometry.json"
    out = args.out or os.path.join(RESULTS_DIR, default)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "weight": WEIGHT,
        "command": "python -m benchmarks.geometry" + (" --quick" if args.quick else ""),
    }
    with open(out, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    print(f"results: {out}")
    return records


if __name__ == "__main__":
    main()

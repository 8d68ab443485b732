"""When does an exact contractive penalty matter? Exact ‖J‖²_F against random-probe estimates
trained for the same wall-clock time, and exact CAE+H against its Monte-Carlo form.

(a) Costs: one train step of each exact route, higher-order form and estimator, × a plain AE
    step, on 784→256 sigmoid and 784→256→32 encoders (medians of interleaved timings).
(b) A CAE (λ = 0.1) with an MLP (256→32) and a conv (16, 32 channels → 32, linear code) encoder,
    trained with the exact penalty, 1-probe Hutchinson and the estimator with the least
    variance × cost at p = k/8 and k/4, each for the SAME wall-clock budget (steps = budget /
    measured step time);
    5 seeds: final exact ‖J‖_F, test cross-entropy, linear-probe accuracy, steps reached, and
    the verdict of `aecore.stats.ordering_verdict` on ‖J‖_F (exact first). Figure: relative
    s.d. of each estimator against its cost (penalty_error_vs_cost.png).
(c) CAE+H (one sigmoid layer): the exact expectation against the 4-draw Monte-Carlo mean: the
    spread of the higher-order gradient over keys, and final metrics at equal steps (5 seeds).

Command:  python -m experiments.exp_estimators [--quick] [--out DIR] [--data mnist10k|digits]
Expected: estimators reach more steps than the exact route on the conv encoder; the best
  estimator's penalty error at k/4 probes is below 1-probe Hutchinson's; the exact CAE+H
  gradient has no spread over keys. Whether the final metrics differ is what is measured.
Runtime:  about 30 min on 2 shared CPU cores (mnist10k, 15 s of training per run); --quick
  about 1 min.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aecore import Objective, stats
from aecore.jacobian import estimate
from aecore.models import ModelSpec
from aecore.train import init_optimizer, make_train_step
from experiments import common

NAME = "estimators"
ENCODERS = {
    "mlp": dict(hidden=(256, 32), activation="sigmoid", output="sigmoid"),
    # A linear code on the relu features: with a sigmoid (or tanh) code this conv AE collapses
    # within 100 steps at any λ, 0 included (code saturated or dead; measured 2026-12-05 at
    # lr 1e-4 to 3e-3), which made the first conv comparison uninformative.
    "conv": dict(
        architecture="conv",
        conv_channels=(16, 32),
        hidden=(32,),
        activation="identity",
        output="sigmoid",
    ),
}
QUICK_CONV = dict(ENCODERS["conv"], conv_channels=(4, 8), hidden=(16,))
CONTRACTIVE = 0.1
BATCH = 64
BUDGET_S = 15.0  # wall-clock seconds of training per run (full mode)


def step_times(specs: dict[str, tuple[dict, Objective]], x, *, rounds: int, steps: int):
    """Seconds per jitted train step of each (model spec, objective): medians over `rounds`
    interleaved rounds of `steps` steps each (compilation excluded)."""
    runs = {}
    xb = jnp.asarray(x[:BATCH])
    for name, (spec, objective) in specs.items():
        model = ModelSpec(**spec).build(x.shape[1:], key=0)
        opt = optax.adam(1e-3)
        step = make_train_step(objective, opt, donate=False)
        state = init_optimizer(opt, model)
        jax.block_until_ready(step(model, state, xb, jax.random.key(0)))  # compile
        runs[name] = (step, model, state)
    times = {name: [] for name in runs}
    for r in range(rounds):
        for name, (step, model, state) in runs.items():
            t = time.perf_counter()
            for i in range(steps):
                out = step(model, state, xb, jax.random.key(r * steps + i))
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def part_a(x, *, widths: dict[str, tuple], rounds: int, steps: int, quick: bool) -> dict[str, Any]:
    """Step time × plain of every contractive route, estimator (1, k/8, k/4 probes; quick: k/4)
    and CAE+H form."""
    out = {}
    for enc, hidden in widths.items():
        spec = dict(hidden=hidden, activation="sigmoid", output="sigmoid")
        k = hidden[-1]
        variants = {"plain": Objective(loss="cross_entropy")}
        for mode in ("auto", "jacrev"):
            variants[f"exact/{mode}"] = Objective(
                loss="cross_entropy", contractive=CONTRACTIVE, jacobian_mode=mode
            )
        for method in estimate.ESTIMATOR_METHODS:
            for p in (k // 4,) if quick else (1, max(k // 8, 2), k // 4):
                variants[f"{method}/{p}"] = Objective(
                    loss="cross_entropy",
                    contractive=CONTRACTIVE,
                    contractive_probes=p,
                    contractive_estimator=method,
                )
        for form in ("monte_carlo", "expected", "hessian"):
            if form == "expected" and len(hidden) > 1:
                continue
            variants[f"cae+h/{form}"] = Objective(
                loss="cross_entropy",
                contractive=CONTRACTIVE,
                higher_order=0.1,
                higher_order_mode=form,
            )
        t = step_times({n: (spec, o) for n, o in variants.items()}, x, rounds=rounds, steps=steps)
        out[enc] = {
            "plain_step_ms": 1e3 * t["plain"],
            "x_plain": {n: t[n] / t["plain"] for n in t if n != "plain"},
        }
        print(enc, {n: round(v, 2) for n, v in out[enc]["x_plain"].items()})
    return out


def choose_estimator(model, x, p: int) -> tuple[str, dict]:
    """The method with the least (relative s.d.)² × products at p probes, measured on x."""
    reports = estimate.estimator_reports(model.encode, jnp.asarray(x), p, examples=8, draws=32)
    score = {m: r.relative_sd**2 * r.products for m, r in reports.items()}
    return min(score, key=score.get), {m: r.relative_sd for m, r in reports.items()}


def _train_seeds(ctx, ds, spec, variants: dict, steps: dict, *, seeds: int, prefix: str):
    """Trains every (variant, seed) record, seeds outermost; per variant the lists of steps,
    exact mean ‖J‖_F, test cross-entropy, linear-probe accuracy and training wall time."""
    keys = ("steps", "jacobian_norm", "test_ce", "probe_acc", "wall_s")
    table = {n: {key: [] for key in keys} for n in variants}
    for seed in range(seeds):
        for name, objective in variants.items():
            train = dict(
                num_steps=steps[name],
                batch_size=BATCH,
                learning_rate=3e-3,
                log_every=max(steps[name] // 10, 1),
            )
            config = common.record(model=spec, objective=objective, train=train, seed=seed)
            t = time.perf_counter()
            m = common.train_record(ctx, f"{prefix}{name}_s{seed}", config, ds).metrics
            row = table[name]
            row["wall_s"].append(time.perf_counter() - t)
            row["steps"].append(steps[name])
            row["jacobian_norm"].append(m["mean_jacobian_norm"])
            row["test_ce"].append(m["reconstruction_error"])
            row["probe_acc"].append(m.get("linear_probe_accuracy", float("nan")))
    return table


def _cae(**kw) -> Objective:
    return Objective(loss="cross_entropy", contractive=CONTRACTIVE, **kw)


def part_b(ctx, ds, *, encoders, seeds, budget_s, probes, out) -> dict[str, Any]:
    """Exact, 1-probe Hutchinson and the best estimator at k/div probes (div in `probes`), each
    for `budget_s` seconds of training (steps from the measured step time)."""
    results = {}
    for enc, spec in encoders.items():
        k = spec["hidden"][-1]
        probe_model = ModelSpec(**spec).build(ds.x_train.shape[1:], key=0)
        variants = {"exact": _cae(), "hutchinson/1": _cae(contractive_probes=1)}
        chosen, errors = {}, {}
        for p in sorted({max(k // div, 2) for div in probes}):
            method, errors[p] = choose_estimator(probe_model, ds.x_train[:8], p)
            chosen[p] = method
            variants[f"{method}/{p}"] = _cae(contractive_probes=p, contractive_estimator=method)
        specs = {n: (spec, o) for n, o in variants.items()}
        secs = step_times(specs, ds.x_train, rounds=3, steps=5)
        steps = {n: max(int(budget_s / secs[n]), 10) for n in variants}
        table = _train_seeds(ctx, ds, spec, variants, steps, seeds=seeds, prefix=f"{enc}_")
        norms = {n: r["jacobian_norm"] for n, r in table.items()}
        verdict = stats.ordering_verdict(norms, ["exact", "hutchinson/1"]) if seeds > 1 else None
        results[enc] = {
            "step_seconds": secs,
            "chosen_estimator": chosen,
            "relative_sd_at_init": errors,
            "runs": table,
            "verdict_jacobian_norm_exact_below_hutchinson1": verdict,
        }
    plot_error_vs_cost(out / "penalty_error_vs_cost.png", results)
    return results


def plot_error_vs_cost(path, results) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (enc, r) in zip(axes[0], results.items(), strict=True):
        secs = r["step_seconds"]
        for p, errs in r["relative_sd_at_init"].items():
            for method, rel in errs.items():
                ax.scatter(estimate.PRODUCTS[method](p), rel, label=f"{method} p={p}", s=18)
        ax.axhline(0, c="k", lw=0.5)
        ax.set(xlabel="Jacobian products per example", ylabel="relative s.d. of the penalty")
        ax.set_title(f"{enc}: exact step {1e3 * secs['exact']:.1f} ms", fontsize=9)
        ax.legend(fontsize=6)
    common.save_figure(fig, path)


def higher_order_gradient_spread(model, x, form: str, *, draws: int) -> float:
    """Σ Var_key(∂term/∂θ) / Σ (E_key ∂term/∂θ)² of CAE+H's term (σ = 0.3) over `draws` keys."""
    from flax import nnx

    from aecore import regularizers

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def term(p, key):
        m = nnx.merge(graphdef, p, rest)
        values = regularizers.contractive_higher_order(
            m.encode, x, key, weight=1.0, sigma=0.3, form=form
        )
        return jnp.mean(values)

    keys = jax.random.split(jax.random.key(0), draws)
    grads = jax.jit(jax.vmap(jax.grad(term), in_axes=(None, 0)))(params, keys)
    g = jnp.concatenate([leaf.reshape(draws, -1) for leaf in jax.tree.leaves(grads)], axis=1)
    return float(jnp.sum(jnp.var(g, axis=0)) / jnp.sum(jnp.mean(g, axis=0) ** 2))


def part_c(ctx, ds, *, hidden: int, steps: int, seeds: int, draws: int) -> dict[str, Any]:
    """CAE+H (λ = 0.03, γ = 1, σ = 0.3), exact expectation against 4 Monte-Carlo draws."""
    spec = dict(hidden=(hidden,), activation="sigmoid", output="sigmoid")
    model = ModelSpec(**spec).build(ds.x_train.shape[1:], key=0)
    xb = jnp.asarray(ds.x_train[:BATCH])
    forms = ("monte_carlo", "expected")
    spread = {f: higher_order_gradient_spread(model, xb, f, draws=draws) for f in forms}
    variants = {
        f: Objective(
            loss="cross_entropy",
            contractive=0.03,
            higher_order=1.0,
            higher_order_sigma=0.3,
            higher_order_mode=f,
        )
        for f in forms
    }
    table = _train_seeds(
        ctx, ds, spec, variants, dict.fromkeys(forms, steps), seeds=seeds, prefix="caeh_"
    )
    paired = None
    if seeds > 1:
        paired = {
            key: dataclasses.asdict(
                stats.paired_test(table["expected"][key], table["monte_carlo"][key])
            )
            for key in ("jacobian_norm", "test_ce", "probe_acc")
        }
    return {"gradient_relative_variance_over_keys": spread, "runs": table, "paired": paired}


def claims(b: dict, c: dict, *, quick: bool) -> list[common.Check]:
    checks = []
    # From the interleaved step-time medians. Only at full size: --quick's conv encoder (16
    # codes, 4 probes) makes XTrace's 8 products and the exact penalty a tie (0.0374 s against
    # 0.0372 s per step in one CI run), so the claim is not one that size can make.
    secs = b["conv"]["step_seconds"]
    estimates = [n for n in b["conv"]["runs"] if n not in ("exact", "hutchinson/1")]
    for name in estimates if not quick else []:
        why = "an estimate is cheaper than the exact conv penalty"
        ratio = secs["exact"] / secs[name]
        checks.append(common.check(f"conv_step_exact_over_{name}", ratio, ">", 1.0, why=why))
    for enc, r in b.items():
        k4 = max(r["relative_sd_at_init"])
        errs = r["relative_sd_at_init"][k4]
        ratio = errs[r["chosen_estimator"][k4]] / (errs["jvp"] * np.sqrt(k4))
        why = "the chosen estimator at k/4 probes beats one Hutchinson probe"
        checks.append(
            common.check(f"{enc}_best_rel_sd_at_k4_over_hutchinson1", ratio, "<", 1.0, why=why)
        )
    spread = c["gradient_relative_variance_over_keys"]
    why = "no Monte-Carlo noise: round-off only"
    checks.append(
        common.check("caeh_expected_gradient_spread", spread["expected"], "<", 1e-10, why=why)
    )
    why = "the Monte-Carlo gradient varies with the key"
    checks.append(common.check("caeh_mc_gradient_spread", spread["monte_carlo"], ">", 0.0, why=why))
    return checks


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args, labelled=True)
    ds = ctx.ds
    if args.quick:
        n, m = 400, 200
        ds = common.dataset(ds.name, ds.x_train[:n], ds.x_test[:m], ds.y_train[:n], ds.y_test[:m])
        a = part_a(ctx.x_train, widths={"64-16": (16,)}, rounds=2, steps=3, quick=True)
        conv = {"conv": QUICK_CONV}
        b = part_b(ctx, ds, encoders=conv, seeds=2, budget_s=1.0, probes=(4,), out=ctx.out)
        c = part_c(ctx, ds, hidden=16, steps=30, seeds=2, draws=16)
    else:
        widths = {"784-256": (256,), "784-256-32": (256, 32)}
        a = part_a(ctx.x_train, widths=widths, rounds=5, steps=5, quick=False)
        b = part_b(
            ctx, ds, encoders=ENCODERS, seeds=5, budget_s=BUDGET_S, probes=(8, 4), out=ctx.out
        )
        c = part_c(ctx, ds, hidden=128, steps=1000, seeds=5, draws=64)
    fields = {"costs": a, "same_budget": b, "caeh": c}
    return common.finish(NAME, ctx, args, fields, checks=claims(b, c, quick=args.quick))


main = common.main_for(run, __doc__, default_data=common.mnist_10k_or_digits())


if __name__ == "__main__":
    main()

"""Render a benchmark results JSON as the Markdown tables of benchmarks/README.md.

    python -m benchmarks.tables benchmarks/results/cpu-2core-amd-epyc.json

Prints the per-route table, the sweep table (full runs) and the headline table of the
top-level README, all computed from the file: no number is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

# Engine routes that compute the exact penalty (auto is one of them; peeled_ref is hand-written).
EXACT_ENGINE_ROUTES = ("auto", "closed_form", "structured", "peel", "blocks", "jacfwd", "jacrev")


def add_route_order(records: list[dict]) -> dict | None:
    """Sets, on one model's `auto` record (and returns it): the exact engine routes timed, by
    the cost model's multiply-adds (`predicted_order`) and by time (`measured_order`), and
    `auto_over_fastest` = the time of auto's route ÷ the fastest route's (target ≤ 1.2).

    A route's time is its fastest row: `auto` and `structured` often run the very program of
    another row, and that spread is noise, not the choice.
    """
    auto = next((r for r in records if r["route"] == "auto"), None)
    ms: dict[str, float] = {}
    macs: dict[str, int] = {}
    for r in records:
        if r["route"] in EXACT_ENGINE_ROUTES and r.get("macs") and r.get("reps", 0) >= 1:
            key = r["route_resolved"]
            ms[key] = min(ms.get(key, float("inf")), r["ms_per_step"])
            macs[key] = r["macs"]
    if auto is None or auto["route_resolved"] not in ms:
        return None
    auto["predicted_order"] = sorted(macs, key=macs.get)
    auto["measured_order"] = sorted(ms, key=ms.get)
    auto["auto_over_fastest"] = ms[auto["route_resolved"]] / min(ms.values())
    return auto


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None where a row was skipped (no time)."""
    return a / b if a is not None and b else None


def _route_label(r: dict) -> str:
    resolved = r.get("route_resolved", r["route"])
    return r["route"] if resolved == r["route"] else f"{r['route']} ({resolved})"


def route_table(records: list[dict], *, compact: bool = False) -> str:
    """One row per (model, route): time, ratios, FLOPs, memory."""
    if compact:
        head = (
            "| model | route (runs) | ms/step | × plain | × faster than torch | GFLOP/step "
            "| XLA temp MB | G multiply-adds | × own model | note |"
        )
        rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    else:
        head = (
            "| model | route (runs) | ms/step | × plain | × faster than torch | GFLOP/step "
            "| GFLOP/s | XLA temp MB | compile s | G multiply-adds | × own model | note |"
        )
        rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    lines = [head, rule]
    for r in records:
        temp = None if r.get("temp_bytes") is None else r["temp_bytes"] / 1e6
        cells = [
            r["model"],
            _route_label(r),
            _num(r["ms_per_step"], ".2f"),
            _num(r["ratio_to_plain"], ".2f"),
            _num(r.get("speedup_vs_torch"), ".1f"),
            _num(r.get("gflop"), ".3f"),
        ]
        if not compact:
            cells.append(_num(r.get("gflops_achieved"), ".1f"))
        cells.append(_num(temp, ".1f"))
        if not compact:
            cells.append(_num(r.get("compile_s"), ".2f"))
        macs = r.get("macs")
        cells += [
            _num(None if macs is None else macs / 1e9, ".3f"),
            _num(r.get("ratio_to_own"), ".2f"),
        ]
        cells.append(r.get("note", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(records: list[dict]) -> str:
    """Plain vs auto vs jacrev along each sweep axis."""
    lines = [
        "| sweep | value | model | batch | plain ms | auto ms (runs) | jacrev ms | auto × plain "
        "| jacrev ÷ auto |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = []
    for r in records:
        key = (r["sweep_axis"], r["sweep_value"])
        if key not in keys:
            keys.append(key)
    for axis, value in keys:
        by_route = {
            r["route"]: r for r in records if r["sweep_axis"] == axis and r["sweep_value"] == value
        }
        plain, auto, jacrev = by_route["plain"], by_route["auto"], by_route["jacrev"]
        lines.append(
            f"| {axis} | {value} | {auto['model']} | {auto['batch']} "
            f"| {_num(plain['ms_per_step'], '.1f')} "
            f"| {_num(auto['ms_per_step'], '.1f')} ({auto['route_resolved']}) "
            f"| {_num(jacrev['ms_per_step'], '.1f')} "
            f"| {_num(_ratio(auto['ms_per_step'], plain['ms_per_step']), '.2f')} "
            f"| {_num(_ratio(jacrev['ms_per_step'], auto['ms_per_step']), '.2f')} |"
        )
    return "\n".join(lines)


def _encoder_label(model: str) -> str:
    """mlp-784-256-32 -> 784→256→32; other models keep their name."""
    return model[4:].replace("-", "→") if model.startswith("mlp-") else model


def headline_table(records: list[dict]) -> str:
    """The top-level README's summary: one row per model, auto against its rivals."""
    lines = [
        "| encoder | plain ms | auto ms (route) | auto × plain | vmap(jacrev) × plain "
        "| torch vmap(jacrev) × plain | Hutchinson estimate × plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    models = []
    for r in records:
        if r["model"] not in models:
            models.append(r["model"])
    for model in models:
        by_route = {r["route"]: r for r in records if r["model"] == model}
        auto, plain = by_route["auto"], by_route["plain"]
        rivals = [
            _num(by_route.get(route, {}).get("ratio_to_plain"), ".1f")
            for route in ("jacrev", "torch_jacrev", "hutchinson")
        ]
        lines.append(
            f"| {_encoder_label(model)} | {_num(plain['ms_per_step'], '.1f')} "
            f"| {_num(auto['ms_per_step'], '.1f')} ({auto['route_resolved']}) "
            f"| {_num(auto['ratio_to_plain'], '.2f')} | " + " | ".join(rivals) + " |"
        )
    return "\n".join(lines)


def user_table(records: list[dict]) -> str:
    """Encoders a user wrote against aecore's own model of the same shape (same run)."""
    lines = [
        "| user-written encoder | route (runs) | G multiply-adds | ms/step | × plain "
        "| × aecore's own model (same route) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if not r["model"].startswith("user-") or r["route"] not in ("auto", "jacrev"):
            continue
        gmacs = None if r.get("macs") is None else r["macs"] / 1e9
        lines.append(
            f"| {r['model']} | {_route_label(r)} | {_num(gmacs, '.3f')} "
            f"| {_num(r['ms_per_step'], '.1f')} | {_num(r['ratio_to_plain'], '.2f')} "
            f"| {_num(r.get('ratio_to_own'), '.2f')} ({r.get('own_model') or '—'}) |"
        )
    return "\n".join(lines)


BEYOND_CHAINS = ("res-ln-", "conv-28-c32s2")


def beyond_table(records: list[dict]) -> str:
    """Encoders beyond chains (residual LayerNorm MLP, conv stack): every route against jacrev
    and the hand-written peeled reference of the same run."""
    lines = [
        "| model | route (runs) | G multiply-adds | ms/step | × plain | jacrev ÷ this "
        "| this ÷ peeled_ref |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if not r["model"].startswith(BEYOND_CHAINS) or r["route"] == "plain":
            continue
        same = {o["route"]: o["ms_per_step"] for o in records if o["model"] == r["model"]}
        ms = r["ms_per_step"]
        gmacs = None if r.get("macs") is None else r["macs"] / 1e9
        lines.append(
            f"| {r['model']} | {_route_label(r)} | {_num(gmacs, '.3f')} | {_num(ms, '.1f')} "
            f"| {_num(r['ratio_to_plain'], '.2f')} | {_num(_ratio(same.get('jacrev'), ms), '.2f')} "
            f"| {_num(_ratio(ms, same.get('peeled_ref')), '.2f')} |"
        )
    return "\n".join(lines)


def order_table(records: list[dict]) -> str:
    """The cost model against the clock: exact routes by predicted multiply-adds and by time."""
    lines = [
        "| model | auto runs | predicted order (multiply-adds) | measured order (ms) "
        "| auto ÷ fastest exact |",
        "|---|---|---|---|---:|",
    ]
    for r in records:
        if r["route"] == "auto" and r.get("measured_order"):
            lines.append(
                f"| {r['model']} | {r['route_resolved']} | {' < '.join(r['predicted_order'])} "
                f"| {' < '.join(r['measured_order'])} | {r['auto_over_fastest']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results JSON written by benchmarks.jacobian")
    parser.add_argument("--compact", action="store_true", help="fewer columns (quick runs)")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        payload = json.load(f)
    meta = payload["meta"]
    peak = meta["matmul_peak_gflops"]
    print(
        f"<!-- {args.results}: {meta['machine']}, {meta['date']}, jax {meta['jax']}, "
        f"torch {meta.get('torch', '—')}, matmul peak {peak:.0f} GFLOP/s -->\n"
    )
    print(route_table(payload["records"], compact=args.compact))
    if payload.get("sweep"):
        print()
        print(sweep_table(payload["sweep"]))
    print()
    print(headline_table(payload["records"]))
    if any(r["model"].startswith(BEYOND_CHAINS) for r in payload["records"]):
        print()
        print(beyond_table(payload["records"]))
    for model in dict.fromkeys(r["model"] for r in payload["records"]):
        add_route_order([r for r in payload["records"] if r["model"] == model])
    if any(r.get("measured_order") for r in payload["records"]):
        print()
        print(order_table(payload["records"]))
    if any(r["model"].startswith("user-") for r in payload["records"]):
        print()
        print(user_table(payload["records"]))


if __name__ == "__main__":
    main()

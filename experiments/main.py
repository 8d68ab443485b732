"""The `aecore` command: train an experiment config, evaluate a run, encode data with a run.

aecore train CONFIG [--quick] [--data PATH_OR_NAME] [--workdir DIR] [--config.KEY=VALUE ...]
             [--resume-as-is | --overwrite]
aecore evaluate WORKDIR
aecore encode WORKDIR --data PATH_OR_NAME --out codes.npy [--allow-out-of-range]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments import configs

# `aecore encode` refuses inputs beyond the training data's [min, max] by more than this
# fraction of its span (the codes of such inputs are extrapolations, often saturated).
RANGE_MARGIN = 0.1


class UserError(ValueError):
    """Bad input found before any work started: `main` prints it as one line, exit code 2."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k in config.keys():
        v = config[k]
        if isinstance(v, ml_collections.ConfigDict):
            keys += _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def _cast(key: str, text: str, current: Any, field_type: type | None) -> Any:
    """`text` as the type of the field `key` (whose value is `current`)."""
    t = field_type if field_type is not None else type(current)
    if text.lower() in ("none", "null") and (current is None or t is type(None)):
        return None
    try:
        if t is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"expected one of {_TRUE + _FALSE}")
        if t is int:
            return int(text)
        if t is float:
            return float(text)
        if t in (tuple, list):
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            elem = type(current[0]) if current else int
            return t(_cast(key, p.strip(), elem(), elem) for p in parts)
        if t is str:
            return text
    except ValueError as e:
        raise ValueError(
            f"--config.{key}={text!r}: cannot read as {t.__name__} ({e}); the field holds "
            f"{current!r}"
        ) from None
    raise ValueError(f"--config.{key}: fields of type {t.__name__} cannot be set from the CLI")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Sets `config` fields from `KEY=VALUE` strings (KEY dotted, e.g. `train.num_steps`).

    Each value is cast to the type of the field it replaces (bool accepts true/false/1/0, tuples
    are comma-separated, `none` clears an optional field).

    Raises:
      ValueError: an unknown key (the message lists the valid keys) or an uncastable value.
    """
    valid = _flat_keys(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must read KEY=VALUE, e.g. train.num_steps=100")
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        *path, name = key.split(".")
        section = config
        for p in path:
            section = section[p]
        ref = section.get_ref(name)
        value = _cast(key, text, section[name], ref.get_type())
        with config.unlocked():  # a type change (e.g. int to float) is allowed when intended
            section[name] = value


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.KEY=VALUE` / `--config.KEY VALUE` from the other arguments."""
    rest, overrides = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            body = a[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise ValueError(f"{a} needs a value: {a}=VALUE")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aecore",
        description="Train, evaluate and use autoencoders with exact Jacobian regularization.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="train an experiment config (resumes a run found in the workdir)",
        description="Train experiment CONFIG, evaluate it and write metrics.json, then the "
        "figures that fit the data. Re-running with the same workdir and the same config "
        "resumes from the latest checkpoint; a workdir holding a run with another config (or "
        "other data) is refused, listing the differing keys, unless --resume-as-is or "
        "--overwrite is given. Override any config field with --config.SECTION.KEY=VALUE, "
        "e.g. --config.train.num_steps=100 --config.objective.contractive=0.5 "
        "--config.model.hidden=128 (--config.train.batch_size=none: the full batch).",
        epilog=f"configs: {', '.join(configs.CONFIGS)}",
    )
    t.add_argument("config", metavar="CONFIG", help=f"one of: {', '.join(configs.CONFIGS)}")
    t.add_argument("--quick", action="store_true", help="the config's quick variant (seconds)")
    t.add_argument(
        "--data",
        default=None,
        help="dataset name (digits, patches, circle, mnist, ...) or a .npy/.npz/.csv path; "
        "overrides config.data.name",
    )
    t.add_argument("--workdir", default=None, help="output directory (default: runs/CONFIG)")
    existing = t.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume-as-is",
        action="store_true",
        help="the workdir holds a run with another config: continue that run with its own "
        "stored config (CONFIG, --data and --config.* are then ignored, with a warning)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="the workdir holds a run: delete it (its checkpoints, logs, metrics and figures; "
        "other files stay) and train CONFIG from scratch",
    )
    e = sub.add_parser(
        "evaluate",
        help="re-evaluate a trained run and update its metrics.json",
        description="Reload the latest checkpoint and config of WORKDIR, evaluate the model on "
        "the config's test split, print the metrics and update WORKDIR/metrics.json (keys it "
        "does not recompute, e.g. final_eval_reconstruction and wall_time_s, are kept), then "
        "redraw the figures.",
    )
    e.add_argument("workdir", metavar="WORKDIR")
    c = sub.add_parser(
        "encode",
        help="encode data with a trained run and save the codes",
        description="Encode every example of --data with the model of WORKDIR and save the "
        "codes [N, d_z] as a .npy file. A .npy file is encoded in its own order; a dataset "
        "name or other file is encoded as its train split followed by its test split. Inputs "
        "are normalized with the training statistics of the run. Inputs beyond the training "
        f"data's [min, max] by more than {int(100 * RANGE_MARGIN)}%% of its span are refused "
        "(their codes are extrapolations, often saturated) unless --allow-out-of-range.",
    )
    c.add_argument("workdir", metavar="WORKDIR")
    c.add_argument("--data", required=True, help="a .npy file, another data file, or a name")
    c.add_argument("--out", required=True, help="output .npy file for the codes")
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument(
        "--allow-out-of-range",
        action="store_true",
        help="encode inputs outside the training data's range anyway (with a warning)",
    )
    return p


def _print_metrics(metrics: dict[str, Any], workdir: str) -> None:
    shown = {k: v for k, v in metrics.items() if k != "figures"}
    print(json.dumps(shown, indent=2, sort_keys=True))
    for name, path in metrics.get("figures", {}).items():
        print(f"{name}: {path}")
    print(f"metrics and figures in {workdir}")


def _train(args, overrides: list[str]) -> dict[str, Any]:
    from experiments import train as tr

    workdir = args.workdir or os.path.join("runs", args.config)
    try:
        config = configs.get_config(args.config, quick=args.quick)
        apply_overrides(config, overrides)
        if args.data is not None:
            config.data.name = args.data
        existing = "resume_as_is" if args.resume_as_is else "refuse"
        existing = "overwrite" if args.overwrite else existing
        run = tr.prepare(config, workdir, existing=existing)  # validates all; writes nothing
    except tr.USER_ERRORS as e:
        raise UserError(_one_line(e)) from e
    metrics = tr.run_prepared(run)
    _print_metrics(metrics, workdir)
    return metrics


def _evaluate(args) -> dict[str, Any]:
    import time

    from experiments import train as tr

    started = time.perf_counter()
    cfg = tr.read_config(args.workdir)
    ds, _ = tr.load_data(cfg["data"])
    model, step = tr.restore_model(args.workdir, cfg, ds.input_shape)
    kept = tr.read_json(os.path.join(args.workdir, tr.METRICS_FILE)) or {}
    kept["steps"] = step
    kept["evaluate_wall_time_s"] = round(time.perf_counter() - started, 2)
    history = tr.read_history(args.workdir)
    metrics = tr.finish_run(model, ds, cfg, args.workdir, history=history, metrics=kept)
    _print_metrics(metrics, args.workdir)
    return metrics


def _check_range(args, x: np.ndarray, record: dict[str, Any]) -> None:
    """Refuses (or with --allow-out-of-range, warns about) inputs far outside the training range.

    `record` is the run's data.json (written at train time; for older runs, the training data
    as loaded now): its "train_min"/"train_max" are in raw units, like `x`.
    """
    from experiments import train as tr

    lo, hi = float(record["train_min"]), float(record["train_max"])
    tol = RANGE_MARGIN * ((hi - lo) or max(abs(lo), abs(hi), 1.0))
    x_lo, x_hi = float(x.min()), float(x.max())
    if x_lo >= lo - tol and x_hi <= hi + tol:
        return
    outside = float(np.mean((x < lo - tol) | (x > hi + tol)))
    message = (
        f"{args.data} holds values in [{x_lo:g}, {x_hi:g}], outside the range [{lo:g}, {hi:g}] "
        f"of the data the model of {args.workdir} was trained on by more than "
        f"{int(100 * RANGE_MARGIN)}% of its span ({100 * outside:.3g}% of the values); their "
        "codes are extrapolations (often saturated)"
    )
    if not args.allow_out_of_range:
        raise ValueError(
            f"{message}: scale the data like the training data, or pass --allow-out-of-range"
        )
    tr.warn(f"{message}; encoding anyway (--allow-out-of-range)")


def _encode(args) -> np.ndarray:
    from aecore import _checks, evaluate
    from aecore.data import load_dataset
    from experiments import train as tr

    cfg = tr.read_config(args.workdir)
    ds, stats = tr.load_data(cfg["data"])  # the training statistics of the run
    if str(args.data).endswith(".npy"):
        x = np.load(args.data, allow_pickle=False)
    else:
        d = cfg["data"]
        new = load_dataset(args.data, data_dir=d["data_dir"], seed=d["seed"])
        x = np.concatenate([new.x_train, new.x_test])
    if not np.issubdtype(np.asarray(x).dtype, np.number):
        raise ValueError(f"{args.data} must hold real numbers, got dtype {np.asarray(x).dtype}")
    x = np.asarray(x, dtype=np.float32)
    _checks.check_finite(str(args.data), x)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != int(np.prod(ds.input_shape)):
        raise ValueError(
            f"{args.data} holds examples of shape {x.shape[1:]}; the model of {args.workdir} "
            f"takes {ds.input_shape}"
        )
    x = x.reshape(x.shape[0], *ds.input_shape)
    _check_range(args, x, tr.read_json(os.path.join(args.workdir, tr.DATA_FILE)) or stats["record"])
    x = ((x - stats["shift"]) / stats["scale"]).astype(np.float32)
    model, _ = tr.restore_model(args.workdir, cfg, ds.input_shape)
    codes = evaluate.encode(model, x, batch_size=args.batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(args.out, codes)
    print(f"wrote codes {codes.shape} of {x.shape[0]} examples to {args.out}")
    return codes


def main(argv: Sequence[str] | None = None, *, exit_on_error: bool | None = None) -> Any:
    """Entry point of the `aecore` console script; returns the command's result (for tests).

    Bad input (an unknown config key, a value out of range, unusable data, an incompatible or
    damaged checkpoint) is found before anything is trained or written. With `exit_on_error`
    (the default when `argv` is None, i.e. for the console script) it is printed to stderr as
    one line `error: ...` and the process exits with code 2; a diverged run exits with code 1
    and an interrupted one with 130, also without a traceback. Otherwise the exception
    propagates (`UserError`, a ValueError, for bad input). Other exceptions are bugs and keep
    their traceback.
    """
    if exit_on_error is None:
        exit_on_error = argv is None
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except Exception as e:
        from aecore.train import TrainingDiverged

        if not exit_on_error or not isinstance(e, UserError | TrainingDiverged):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, UserError) else 1) from None
    except KeyboardInterrupt as e:
        if not exit_on_error:
            raise
        print(f"error: {_one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None


def cli() -> int:
    """The `aecore` console script: `main` on sys.argv, exit status 0 on success.

    The console-script wrapper calls `sys.exit(cli())`; `main` returns the command's result
    (a metrics dict, an array), which `sys.exit` would print and turn into status 1.
    """
    main()
    return 0


def _main(argv: list[str]) -> Any:
    parser = _parser()
    try:
        rest, overrides = _split_overrides(argv)
    except ValueError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    if overrides and args.command != "train":
        parser.error("--config.KEY=VALUE overrides apply to `aecore train` only")
    if args.command == "train":
        if args.config not in configs.CONFIGS:
            parser.error(f"unknown config {args.config!r}; valid: {', '.join(configs.CONFIGS)}")
        return _train(args, overrides)
    from aecore.checkpoint import CheckpointError

    try:
        if args.command == "evaluate":
            return _evaluate(args)
        return _encode(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        raise UserError(_one_line(e)) from e


if __name__ == "__main__":
    sys.exit(cli())

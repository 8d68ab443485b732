"""The `aecore` command: train an experiment config, evaluate a run, encode data with a run.

aecore train CONFIG [--quick] [--data PATH_OR_NAME] [--workdir DIR] [--config.KEY=VALUE ...]
             [--resume-as-is | --overwrite]
aecore evaluate WORKDIR [--allow-different-data]
aecore encode WORKDIR --data PATH_OR_NAME --out codes.npy [--allow-out-of-range] [--overwrite]
              [--allow-different-data]
aecore config NAME [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from aecore import _checks, configs, distributed
from aecore.train.rundir import (
    DATA_FILE,
    METRICS_FILE,
    RunDir,
    StorageError,
    WorkdirBusy,
    hold_lock,
    release_lock,
)

# `aecore encode` refuses data of which more than RANGE_FRACTION of the values lie outside the
# [min, max] of the data the run was trained from (the whole file: train and test splits),
# widened by RANGE_MARGIN of its span on each side. The pixel-scale mistake (0..16 for a model
# of [0, 1] data) puts most values there; the training file itself puts none, and one extreme
# value, or a held-out file a little beyond the range, stays under the fraction.
RANGE_MARGIN = 0.1
RANGE_FRACTION = 0.01


class UserError(ValueError):
    """Bad input found before any work started: `main` prints it as one line, exit code 2."""


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
    _add_train(sub)
    _add_evaluate(sub)
    _add_encode(sub)
    _add_config(sub)
    return p


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train an experiment config (resumes a run found in the workdir)",
        description="Train experiment CONFIG, evaluate it and write metrics.json, then the "
        "figures that fit the data. Re-running with the same workdir and the same config "
        "resumes from the latest checkpoint; a workdir holding a run with another config (or "
        "other data) is refused, listing the differing keys, unless --resume-as-is or "
        "--overwrite is given. Override any config field with --config.SECTION.KEY=VALUE "
        "(ml_collections.config_flags; `aecore config CONFIG` lists them), e.g. "
        "--config.train.num_steps=100 --config.objective.contractive=0.5 "
        "--config.model.hidden=128,64 --config.objective.contractive_probes=1 "
        "(--config.train.batch_size=none: the full batch).",
        epilog="configs (what each trains, and what it should reach):\n\n"
        + "\n\n".join(
            textwrap.fill(
                configs.summary(n), 100, initial_indent=f"  {n}: ", subsequent_indent="    "
            )
            for n in configs.CONFIGS
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help="the workdir holds a run aecore wrote (it is marked by aecore_run.json): delete "
        "the files aecore wrote there (checkpoints, logs, metrics, figures; other files stay) "
        "and train CONFIG from scratch; a folder aecore did not mark is refused",
    )
    _add_processes(t)


def _add_processes(t: argparse.ArgumentParser) -> None:
    """The flags of a run over several processes or machines (`distributed.initialize`)."""
    mp = t.add_argument_group(
        "several processes or machines",
        "Data-parallel training over all processes' devices on JAX's distributed runtime: start "
        "the same command once per process (every process reads the whole dataset and feeds its "
        "own rows of each global batch; the workdir must be on storage all processes share). "
        f"Flags win over ${distributed.ENV_COORDINATOR}, ${distributed.ENV_NUM_PROCESSES} and "
        f"${distributed.ENV_PROCESS_ID}.",
    )
    mp.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 serves the run")
    mp.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    mp.add_argument("--process-id", type=int, metavar="I", help="this process, in [0, N)")
    mp.add_argument(
        "--distributed",
        action="store_true",
        help="let JAX detect the cluster (SLURM, Open MPI, Kubernetes) for what is not given",
    )
    mp.add_argument(
        "--join-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for every process to arrive (default 120)",
    )


def _add_evaluate(sub) -> None:
    e = sub.add_parser(
        "evaluate",
        help="re-evaluate a trained run and update its metrics.json",
        description="Reload the latest checkpoint and config of WORKDIR, evaluate the model on "
        "the config's test split, print the metrics and update WORKDIR/metrics.json (keys it "
        "does not recompute, e.g. final_eval_reconstruction and wall_time_s, are kept), then "
        "redraw the figures. The data must be the data the run was trained on (its sha256 "
        "in WORKDIR/data.json); metrics.json records which data it was computed on.",
    )
    e.add_argument("workdir", metavar="WORKDIR")
    _add_allow_different_data(e)


def _add_allow_different_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-different-data",
        action="store_true",
        help="the run's training data file changed since training (its sha256 differs from "
        "the one in data.json): use it anyway, with a warning",
    )


def _add_encode(sub) -> None:
    c = sub.add_parser(
        "encode",
        help="encode data with a trained run and save the codes",
        description="Encode every example of --data with the model of WORKDIR and save the "
        "codes [N, d_z] as a .npy file. A .npy file is encoded in its own order; a dataset "
        "name or other file is encoded as its train split followed by its test split. Inputs "
        "are normalized with the training statistics of the run. Data of which more than "
        f"{100 * RANGE_FRACTION:g}% of the values lie beyond the [min, max] of the file the run "
        f"was trained from by more than {100 * RANGE_MARGIN:g}% of its span (e.g. 0..16 pixels "
        "for a model of [0, 1] data) is refused, since its codes are extrapolations, often "
        "saturated, unless --allow-out-of-range; the training file itself always encodes.",
    )
    c.add_argument("workdir", metavar="WORKDIR")
    c.add_argument("--data", required=True, help="a .npy file, another data file, or a name")
    c.add_argument(
        "--out",
        required=True,
        help="output .npy file for the codes (.npy is appended when missing); an existing "
        "file is refused unless --overwrite, and the --data file always is",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_allow_different_data(c)
    c.add_argument("--batch-size", type=int, default=512)
    c.add_argument(
        "--allow-out-of-range",
        action="store_true",
        help="encode inputs outside the training data's range anyway (with a warning)",
    )


def _add_config(sub) -> None:
    g = sub.add_parser(
        "config",
        help="print an experiment config with its docstring",
        description="Print config NAME's docstring (what it trains, the command, what it should "
        "reach, its runtime) and every field as `section.key = value`: each line is settable "
        "with `aecore train NAME --config.section.key=VALUE`.",
    )
    g.add_argument("name", metavar="NAME", help=f"one of: {', '.join(configs.CONFIGS)}")
    g.add_argument("--quick", action="store_true", help="the config's quick variant")


def _print_config(args) -> str:
    config = configs.get_config(args.name, quick=args.quick)
    text = f"{configs.doc(args.name)}\n\n{configs.describe(config)}"
    print(text)
    return text


def _print_metrics(metrics: dict[str, Any], workdir: str) -> None:
    shown = {k: v for k, v in metrics.items() if k != "figures"}
    print(json.dumps(shown, indent=2, sort_keys=True))
    for name, path in metrics.get("figures", {}).items():
        print(f"{name}: {path}")
    print(f"metrics and figures in {workdir}")


def _train(args, overrides: list[str]) -> dict[str, Any]:
    from aecore import run as aerun

    workdir = args.workdir or os.path.join("runs", args.config)
    if not math.isfinite(args.join_timeout) or args.join_timeout <= 0:
        raise UserError(f"--join-timeout must be a number of seconds > 0, got {args.join_timeout}")
    try:  # before anything touches a device: the run's devices span every process
        distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            auto=args.distributed,
            join_timeout_s=args.join_timeout,
        )
    except ValueError as e:
        raise UserError(_checks.one_line(e)) from e
    try:
        try:
            hold_lock(workdir, create=False)  # a run another process is writing: refuse now
            config = configs.override(configs.get_config(args.config, quick=args.quick), overrides)
            if args.data is not None:
                config.data.name = args.data
            existing = "resume_as_is" if args.resume_as_is else "refuse"
            existing = "overwrite" if args.overwrite else existing
            # Validates all (the config becomes one RunConfig there) and writes nothing.
            prepared = aerun.prepare(config, workdir, existing=existing)
        except aerun.USER_ERRORS as e:
            raise UserError(_checks.one_line(e)) from e
        try:
            _, metrics = aerun.run_prepared(prepared)
        except WorkdirBusy as e:  # another process took a new workdir first: nothing written
            raise UserError(_checks.one_line(e)) from e
    finally:
        release_lock(workdir)
    if jax.process_index() == 0:
        _print_metrics(metrics, workdir)
    distributed.shutdown()
    return metrics


def _evaluate(args) -> dict[str, Any]:
    import time

    from aecore import run as aerun

    started = time.perf_counter()
    config = aerun.read_config(args.workdir)
    aerun.check_workdir(args.workdir)  # it writes metrics.json and figures there
    ds, _, data = aerun.load_run_data(
        args.workdir, config, allow_different=args.allow_different_data
    )
    model, step = aerun.restore_model(args.workdir, config, ds.input_shape)
    run = RunDir(args.workdir)
    kept = run.read_json(METRICS_FILE) or {}
    kept["steps"] = step
    kept["data"] = data
    kept["evaluate_wall_time_s"] = round(time.perf_counter() - started, 2)
    history = run.history()
    metrics = aerun.finish_run(model, ds, config, args.workdir, history=history, metrics=kept)
    _print_metrics(metrics, args.workdir)
    return metrics


def _check_range(args, x: np.ndarray, record: dict[str, Any]) -> None:
    """Refuses (or with --allow-out-of-range, warns about) inputs far outside the training range.

    `record` is the run's data.json (written at train time; for older runs, the training data
    as loaded now), in raw units like `x`: "data_min"/"data_max" span the whole file the run
    was trained from (runs older than that record the training split's "train_min"/"train_max").
    """
    from aecore import run as aerun

    lo = float(record.get("data_min", record["train_min"]))
    hi = float(record.get("data_max", record["train_max"]))
    tol = RANGE_MARGIN * ((hi - lo) or max(abs(lo), abs(hi), 1.0))
    outside = float(np.mean((x < lo - tol) | (x > hi + tol)))
    if outside <= RANGE_FRACTION:
        return
    message = (
        f"{args.data} holds values in [{float(x.min()):g}, {float(x.max()):g}], outside the "
        f"range [{lo:g}, {hi:g}] of the data the model of {args.workdir} was trained on by more "
        f"than {100 * RANGE_MARGIN:g}% of its span: {100 * outside:.3g}% of the values (at most "
        f"{100 * RANGE_FRACTION:g}% may be); their codes are extrapolations (often saturated)"
    )
    if not args.allow_out_of_range:
        raise ValueError(
            f"{message}: scale the data like the training data, or pass --allow-out-of-range"
        )
    aerun.warn(f"{message}; encoding anyway (--allow-out-of-range)")


def _encode(args) -> np.ndarray:
    from aecore import evaluate
    from aecore import run as aerun
    from aecore.data import load_array, load_dataset

    config = aerun.read_config(args.workdir)
    out = _encode_out(args)
    # The training statistics of the run, from the data it was trained on.
    ds, stats, _ = aerun.load_run_data(
        args.workdir, config, allow_different=args.allow_different_data
    )
    if str(args.data).endswith(".npy"):
        x = load_array(args.data)
    else:
        new = load_dataset(args.data, data_dir=config.data.data_dir, seed=config.data.seed)
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
    _check_range(args, x, RunDir(args.workdir).read_json(DATA_FILE) or stats["record"])
    x = ((x - stats["shift"]) / stats["scale"]).astype(np.float32)
    model, _ = aerun.restore_model(args.workdir, config, ds.input_shape)
    codes = evaluate.encode(model, x, batch_size=args.batch_size)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = f"{out}.tmp.npy"  # written whole, then renamed: an old --out survives a failure
        np.save(tmp, codes)
        os.replace(tmp, out)
    except OSError as e:
        raise StorageError(f"could not write {out} ({e.strerror or e}); nothing was kept") from e
    print(f"wrote codes {codes.shape} of {x.shape[0]} examples to {out}")
    return codes


def _encode_out(args) -> str:
    """The file `encode` writes (np.save's name: `.npy` appended), refused where unsafe."""
    out = os.fspath(args.out)
    out = out if out.endswith(".npy") else f"{out}.npy"
    data = os.fspath(args.data)
    if os.path.realpath(out) == os.path.realpath(data) or (
        os.path.exists(out) and os.path.exists(data) and os.path.samefile(out, data)
    ):
        raise ValueError(f"--out {out} is the --data file; write the codes to another file")
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a directory; name a .npy file")
    if os.path.lexists(out) and not args.overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it, or another --out")
    return out


def main(argv: Sequence[str] | None = None, *, exit_on_error: bool | None = None) -> Any:
    """Entry point of the `aecore` console script; returns the command's result (for tests).

    Bad input (an unknown config key, a value out of range, unusable data, an incompatible or
    damaged checkpoint, a workdir another process is writing) is found before anything is
    trained or written. With `exit_on_error` (the default when `argv` is None, i.e. for the
    console script) it is printed to stderr as one line `error: ...` and the process exits
    with code 2; a diverged run, or a file that could not be written (disk full, read-only:
    `StorageError`, naming the file and what was kept), exits with code 1 and an interrupted
    one with 130, also without a traceback. Otherwise the exception
    propagates (`UserError`, a ValueError, for bad input). Other exceptions are bugs and keep
    their traceback.
    """
    if exit_on_error is None:
        exit_on_error = argv is None
    if exit_on_error:
        sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
        # orbax logs each failed write of its threads with a traceback (hundreds of lines on a
        # full disk); the command reports the failure itself, in its one `error:` line.
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except Exception as e:
        from aecore.train import TrainingDiverged

        if exit_on_error and isinstance(e, distributed.PeerLost):
            # Python's normal exit would wait on the lost peer (runtime shutdown): leave now.
            print(f"error: {_checks.one_line(e)}", file=sys.stderr, flush=True)
            os._exit(distributed.EXIT_PEER_LOST)
        if not exit_on_error or not isinstance(e, UserError | TrainingDiverged | StorageError):
            raise
        print(f"error: {_checks.one_line(e)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, UserError) else 1) from None
    except KeyboardInterrupt as e:
        if not exit_on_error:
            raise
        print(f"error: {_checks.one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None


def _from_orbax(unraisable) -> bool:
    """Whether an unraisable exception is orbax's cleanup after a failed read: "Event loop is
    closed" from a future's callback, or the error of one of its read coroutines reported again
    when the coroutine is collected (the command has reported the failure once already)."""
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
        return True
    tb = unraisable.exc_traceback
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_closed_loop(hook):
    """`hook` without orbax's cleanup reports (`_from_orbax`), which can arrive by the dozen
    after a failed read and bury the one `error:` line; every other unraisable exception is
    reported by `hook` as before."""
    if getattr(hook, "aecore_quiet", False):
        return hook

    def quiet(unraisable) -> None:
        if not _from_orbax(unraisable):
            hook(unraisable)

    quiet.aecore_quiet = True
    return quiet


def cli() -> int:
    """The `aecore` console script: `main` on sys.argv, exit status 0 on success.

    The console-script wrapper calls `sys.exit(cli())`; `main` returns the command's result
    (a metrics dict, an array), which `sys.exit` would print and turn into status 1.
    """
    try:
        main()
    except BrokenPipeError:  # e.g. `aecore config NAME | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs say
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
    if args.command in ("train", "config"):
        name = args.config if args.command == "train" else args.name
        if name not in configs.CONFIGS:
            parser.error(f"unknown config {name!r}; valid: {', '.join(configs.CONFIGS)}")
        return _train(args, overrides) if args.command == "train" else _print_config(args)
    from aecore.checkpoint import CheckpointError

    try:
        if args.command == "evaluate":
            return _evaluate(args)
        return _encode(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        raise UserError(_checks.one_line(e)) from e


if __name__ == "__main__":
    sys.exit(cli())

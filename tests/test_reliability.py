"""Reliability (issue #6): bad input is refused before training and leaves the workdir as it
was; damaged checkpoints are reported; killed runs resume exactly; edge values stay finite.
"""

import dataclasses
import glob
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aecore import checkpoint, evaluate, losses, regularizers, train
from aecore import run as aerun
from aecore.cli import main
from aecore.data import normalize
from aecore.models import make_autoencoder
from aecore.objective import Objective
from aecore.train.rundir import LOCK_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(_leaves(a), _leaves(b), strict=True))


def _snapshot(root) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` (relative path) with its bytes and mtime in ns; dirs too.

    The lock file aside: whoever takes the lock of a workdir writes its PID there.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (b"", 0)
        for f in filenames:
            if f == LOCK_FILE:
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


# --------------------------------------------------------------------------------------------
# The CLI: bad input is one line on stderr, exit code 2, and the workdir is left as it was.

# Reading a damaged step makes a tensorstore read fail inside orbax; the failed future's
# callback can arrive after orbax closed its asyncio loop, which Python reports as an
# "unraisable" RuntimeError('Event loop is closed'). It is orbax's cleanup, not a failure here.
ORBAX_CLOSED_LOOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


GOOD = ["train", "undercomplete", "--quick", "--config.train.num_steps=4"]
GOOD += ["--config.train.checkpoint_every=2", "--config.train.eval_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished quick run (checkpoints at steps 2 and 4) and bad data files beside it."""
    root = tmp_path_factory.mktemp("cli")
    wd = str(root / "wd")
    metrics = main([*GOOD, "--workdir", wd], exit_on_error=True)
    assert metrics["steps"] == 4
    rng = np.random.default_rng(0)
    np.save(root / "nan.npy", np.where(rng.uniform(size=(50, 64)) < 0.5, np.nan, 0.5))
    np.save(root / "inf.npy", np.full((50, 64), np.inf, np.float32))
    np.save(root / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(root / "real.npy", rng.normal(size=(100, 64)).astype(np.float32))
    np.save(root / "rank5.npy", np.zeros((10, 2, 2, 2, 2), np.float32))
    np.save(root / "flat.npy", rng.uniform(size=(100, 10)).astype(np.float32))
    np.save(root / "few.npy", rng.uniform(size=(20, 64)).astype(np.float32))
    (root / "text.csv").write_text("a,b\n1,x\n2,3\n")
    return root, wd


# (extra arguments, a fragment the one-line message must contain)
BAD_COMMANDS = [
    # data
    (["--data", "{root}/nan.npy"], "contains 1"),  # "... non-finite value(s) (NaN or inf)"
    (["--data", "{root}/inf.npy"], "non-finite value(s) (NaN or inf)"),
    (["--data", "{root}/empty.npy"], "x is empty (shape (0, 64))"),
    (["--data", "{root}/real.npy"], "the cross-entropy loss needs data in [0, 1]"),
    (["--data", "{root}/rank5.npy"], "x has rank 5 (shape (10, 2, 2, 2, 2)); expected"),
    (["--data", "{root}/text.csv"], "line 2, column 2 ('b'): 'x' is not a number"),
    (["--data", "{root}/missing.npy"], "missing.npy' does not exist"),
    (["--data", "nosuchset"], "unknown dataset 'nosuchset'; valid names: 'digits'"),
    (["--data", "{root}/flat.npy"], "checkpoint (64, 32) vs model (10, 32)"),
    (["--data", "{root}/few.npy"], "train.batch_size 32 exceeds the 16 training examples"),
    (
        ["--config.model.architecture=conv", "--data", "{root}/flat.npy"],
        "conv autoencoder needs input_shape [H, W, C], got (10,)",
    ),
    # hyperparameters
    (["--config.objective.kl=-1"], "kl must be a finite number >= 0, got -1.0"),
    (["--config.objective.contractive=-0.5"], "contractive must be a finite number >= 0"),
    (["--config.objective.weight_decay=-1e-3"], "weight_decay must be a finite number >= 0"),
    (["--config.objective.rho=1.5"], "rho must lie in the open interval (0, 1), got 1.5"),
    (["--config.objective.rho=0"], "rho must lie in the open interval (0, 1), got 0.0"),
    (
        ["--config.objective.corruption=mask", "--config.objective.corruption_level=1"],
        "corruption_level (mask q) must lie in [0, 1), got 1.0",
    ),
    (
        ["--config.objective.corruption=gaussian", "--config.objective.corruption_level=-1"],
        "corruption_level must be a finite number >= 0, got -1.0",
    ),
    (["--config.objective.higher_order_sigma=-0.1"], "higher_order_sigma must be a finite"),
    (["--config.model.hidden=0"], "hidden width must be a positive integer, got 0"),
    (["--config.model.hidden=32,-3"], "hidden width must be a positive integer, got -3"),
    (["--config.train.batch_size=100000"], "batch_size 100000 exceeds the 200 training"),
    (["--config.train.batch_size=0"], "batch_size must be a positive integer, got 0"),
    (
        ["--config.train.data_parallel=true", "--config.train.batch_size=30"],
        "needs train.batch_size divisible by the 8 devices, got 30",
    ),
    (["--config.train.learning_rate=-1"], "learning_rate must be a finite number > 0"),
    (["--config.train.num_steps=many"], "--config.train.num_steps=many: invalid literal for int"),
    (["--config.model.activation=swish"], "unknown activation 'swish'; valid: 'sigmoid'"),
    (["--config.objective.jacobian_mode=fast"], "unknown jacobian_mode 'fast'; valid: 'auto'"),
    (["--config.objective.loss=hinge"], "unknown loss 'hinge'; valid: 'squared_error'"),
    (["--config.objective.corruption=salt"], "unknown corruption 'salt'; valid: 'none'"),
    (["--config.train.optimizer=newton"], "unknown optimizer 'newton'; valid: 'adam'"),
    (["--config.data.normalization=zca"], "unknown normalization method 'zca'; valid:"),
    (["--config.train.bogus=1"], "unknown config key 'train.bogus'; valid keys: data.data_dir"),
    # checkpoints of another model or optimizer
    (["--config.model.hidden=16"], "checkpoint (64, 32) vs model (64, 16)"),
    (["--config.train.optimizer=sgd"], "optimizer-state checkpoint"),
]


@pytest.mark.parametrize("extra, message", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_bad_input_is_one_line_exit_2_and_leaves_the_workdir_untouched(
    trained, extra, message, capsys
):
    root, wd = trained
    before = _snapshot(wd)
    capsys.readouterr()
    argv = [*GOOD, "--workdir", wd, *(a.format(root=root) for a in extra)]
    with pytest.raises(SystemExit) as e:
        main(argv, exit_on_error=True)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err
    assert _snapshot(wd) == before


@ORBAX_CLOSED_LOOP
def test_damaged_checkpoint_evaluate_refuses_and_train_resumes_from_the_intact_one(trained, capsys):
    """Case 1 of issue 36 through the command: evaluate and encode refuse the damaged newest
    step in one line; train resumes from the newest intact step, keeps the damaged one aside,
    and ends where the undamaged run ended."""
    root, wd = trained
    damaged = str(root / "damaged")
    shutil.copytree(wd, damaged)
    newest = os.path.join(damaged, "checkpoints", "4")
    for f in glob.glob(os.path.join(newest, "model", "d", "*")):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    before = _snapshot(damaged)
    out = str(root / "damaged_codes.npy")
    for argv in (["evaluate", damaged], ["encode", damaged, "--data", "digits", "--out", out]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv, exit_on_error=True)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"checkpoint step 4 in {damaged}/checkpoints is damaged (file model/d/" in err
        assert f"delete {newest} to resume from step 2" in err
        assert _snapshot(damaged) == before and not os.path.exists(out)
    capsys.readouterr()
    main([*GOOD, "--workdir", damaged], exit_on_error=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "resuming from step 2" in warnings[0], warnings
    assert f"kept as {newest}.damaged" in warnings[0]
    aside = _snapshot(newest + ".damaged")  # the damaged bytes are kept, not deleted
    prefix = "checkpoints/4/"
    assert aside == {
        k[len(prefix) :]: v for k, v in before.items() if k.startswith(prefix) and k != prefix
    }
    config = aerun.read_config(wd)
    redone = aerun.restore_model(damaged, config, (8, 8, 1))
    original = aerun.restore_model(wd, config, (8, 8, 1))
    assert redone[1] == original[1] == 4
    assert _max_diff(redone[0], original[0]) == 0.0


def test_console_script_prints_one_line_and_exits_2(trained):
    """The real `aecore` command (a subprocess): no traceback, exit code 2, workdir as it was."""
    root, wd = trained
    before = _snapshot(wd)
    exe = os.path.join(os.path.dirname(sys.executable), "aecore")
    proc = subprocess.run(
        [exe, *GOOD, "--workdir", wd, "--config.objective.rho=2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rho must lie in the open interval (0, 1), got 2.0"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(wd) == before


def test_console_script_exits_0_after_a_good_run(tmp_path):
    """Success is exit status 0 (the console wrapper is `sys.exit(cli())`)."""
    exe = os.path.join(os.path.dirname(sys.executable), "aecore")
    wd = str(tmp_path / "run")
    proc = subprocess.run(
        [exe, *GOOD, "--workdir", wd], capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.exists(os.path.join(wd, "metrics.json")), os.listdir(wd)


def test_evaluate_and_encode_report_bad_input_in_one_line(trained, capsys):
    root, wd = trained
    before = _snapshot(wd)
    out = str(root / "codes.npy")
    commands = [
        (["evaluate", str(root / "nowhere")], "holds no config.json; train a model there first"),
        (["encode", wd, "--data", f"{root}/flat.npy", "--out", out], "takes (8, 8, 1)"),
        (["encode", wd, "--data", f"{root}/nan.npy", "--out", out], "non-finite"),
    ]
    for argv, message in commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(argv, exit_on_error=True)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, err
    assert not os.path.exists(out)
    assert _snapshot(wd) == before


def test_divergence_through_the_cli_is_one_line_exit_1(trained, monkeypatch, capsys):
    root, wd = trained

    def diverge(*args, **kwargs):
        raise train.TrainingDiverged("non-finite values at step 3: kl, loss")

    monkeypatch.setattr("aecore.run.fit", diverge)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*GOOD, "--workdir", str(root / "diverges")], exit_on_error=True)
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: non-finite values at step 3: kl, loss\n"


def test_library_callers_still_get_the_exception(trained):
    root, wd = trained
    with pytest.raises(ValueError, match=r"rho must lie in the open interval \(0, 1\)"):
        main([*GOOD, "--workdir", wd, "--config.objective.rho=2"])


def test_a_bug_keeps_its_traceback(trained, monkeypatch):
    """Errors after validation are not dressed up as bad input."""
    root, wd = trained

    def broken(*args, **kwargs):
        raise ValueError("a bug inside training")

    monkeypatch.setattr("aecore.run.fit", broken)
    fresh = str(root / "bug")
    with pytest.raises(ValueError, match="a bug inside training"):
        main([*GOOD, "--workdir", fresh], exit_on_error=True)


def test_probe_without_labels_names_the_missing_split():
    codes = np.zeros((4, 2))
    with pytest.raises(ValueError, match="needs labels for both splits, got y_train=None"):
        evaluate.linear_probe(codes, None, codes, np.zeros(4, np.int32))


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic saves, damage is reported, nothing is unpickled.

SHAPE = (4, 4, 1)
OBJ = Objective(loss="cross_entropy", contractive=0.1)


def _data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE)).astype(np.float32)


def _model(hidden=(6,)):
    return make_autoencoder(SHAPE, hidden=hidden, key=0)


def _config(**kw):
    base = dict(num_steps=4, batch_size=16, learning_rate=1e-2, log_every=2, progress=False)
    return train.TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory):
    """A workdir whose checkpoints hold steps 2 and 4."""
    wd = str(tmp_path_factory.mktemp("ckpt") / "wd")
    train.fit(_model(), OBJ, _data(), config=_config(checkpoint_every=2), workdir=wd)
    return wd


@pytest.fixture
def run_copy(ckpt_run, tmp_path):
    wd = str(tmp_path / "wd")
    shutil.copytree(ckpt_run, wd)
    return wd


def test_kill_during_save_leaves_the_previous_step_in_use(run_copy):
    """A save killed mid-way leaves orbax's temporary folder: it is ignored, not restored."""
    ckpts = os.path.join(run_copy, "checkpoints")
    partial = os.path.join(ckpts, "6.orbax-checkpoint-tmp-1700000000")
    shutil.copytree(os.path.join(ckpts, "4"), partial)
    for f in glob.glob(os.path.join(partial, "model", "d", "*")):
        os.truncate(f, 10)
    assert checkpoint.latest_step(ckpts) == 4
    model, _, step, _ = checkpoint.restore_checkpoint(ckpts, _model())
    assert step == 4 and all(np.isfinite(v).all() for v in _leaves(model))
    resumed = train.fit(_model(), OBJ, _data(), config=_config(num_steps=6), workdir=run_copy)
    assert resumed.start_step == 4
    straight = train.fit(_model(), OBJ, _data(), config=_config(num_steps=6))
    assert _max_diff(resumed.model, straight.model) <= 1e-6


@ORBAX_CLOSED_LOOP
@pytest.mark.parametrize("damage", ["truncate", "bitflip", "metadata", "empty_step"])
def test_damaged_newest_step_is_reported_with_the_fallback(run_copy, damage):
    ckpts = os.path.join(run_copy, "checkpoints")
    newest = os.path.join(ckpts, "4")
    if damage == "truncate":
        for f in glob.glob(os.path.join(newest, "model", "d", "*")):
            os.truncate(f, os.path.getsize(f) // 2)
    elif damage == "bitflip":
        for f in glob.glob(os.path.join(newest, "model", "d", "*")):
            data = bytearray(open(f, "rb").read())
            data[len(data) // 2] ^= 0xFF
            open(f, "wb").write(bytes(data))
    elif damage == "metadata":
        os.truncate(os.path.join(newest, "meta", "metadata"), 100)
    else:  # a copy interrupted before any file of step 6 arrived
        os.makedirs(os.path.join(ckpts, "6"))
        newest = os.path.join(ckpts, "6")
    step = os.path.basename(newest)
    state = "unreadable" if damage == "empty_step" else "damaged"  # digests catch the rest
    expected = rf"checkpoint step {step} in .* is {state} .*; delete {newest} to resume from"
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        checkpoint.restore_checkpoint(
            ckpts, _model(), train.init_optimizer(train.make_optimizer(_config()), _model())
        )
    # A resume falls back to the newest intact step (never a silent re-init); `fit` sets the
    # damaged one aside and ends where an uninterrupted run ends (tested through the command
    # in test_damaged_checkpoint_evaluate_refuses_and_train_resumes_from_the_intact_one).
    with checkpoint.Checkpointer(ckpts) as ckpt:
        model, _, restored, _ = ckpt.restore(_model(), fallback=True)
        assert restored == (2 if step == "4" else 4) and [s for s, _ in ckpt.skipped] == [int(step)]
    assert all(np.isfinite(v).all() for v in _leaves(model))


def test_restore_never_unpickles(run_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint restore tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    template = _model()
    opt = train.init_optimizer(train.make_optimizer(_config()), template)
    model, opt_state, step, config = checkpoint.restore_checkpoint(
        os.path.join(run_copy, "checkpoints"), template, opt
    )
    assert step == 4 and config == {}  # fit stores no config unless given run_config
    assert len(_leaves(opt_state)) == len(_leaves(opt))
    # And what is stored: JSON for metadata, tensorstore chunks (no pickle opcodes) for arrays.
    for f in glob.glob(os.path.join(run_copy, "checkpoints", "4", "**", "*"), recursive=True):
        if os.path.isfile(f):
            head = open(f, "rb").read(2)
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def test_a_stateless_optimizer_checkpoints_and_resumes(tmp_path):
    # Plain SGD has an empty optimizer state: saved as no arrays, restored as the template.
    x = np.random.default_rng(0).uniform(size=(32, *SHAPE)).astype(np.float32)
    cfg = train.TrainConfig(
        num_steps=4, batch_size=8, optimizer="sgd", learning_rate=0.1, progress=False
    )
    wd = str(tmp_path / "wd")
    first = train.fit(_model(), Objective(loss="cross_entropy"), x, config=cfg, workdir=wd)
    longer = dataclasses.replace(cfg, num_steps=6)
    resumed = train.fit(_model(), Objective(loss="cross_entropy"), x, config=longer, workdir=wd)
    assert first.step == 4 and resumed.start_step == 4 and resumed.step == 6
    straight = train.fit(_model(), Objective(loss="cross_entropy"), x, config=longer)
    for a, b in zip(_leaves(resumed.model), _leaves(straight.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Divergence and signals.


def test_divergence_names_the_step_and_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    x = _data(64)
    cfg = _config(num_steps=40, batch_size=4, checkpoint_every=3)
    bad_step = 10  # epochs of 16 batches: the example of row 40 of epoch 0's order
    x[train.epoch_order(0, 0, 64)[4 * bad_step]] = 1e20  # squared error overflows float32
    obj = Objective(loss="squared_error", contractive=0.1)
    model = make_autoencoder(SHAPE, hidden=(6,), output="identity", key=0)
    wd = str(tmp_path)
    with pytest.raises(train.TrainingDiverged) as e:
        train.fit(model, obj, x, config=cfg, workdir=wd)
    msg = str(e.value)
    assert msg.startswith(f"non-finite values at step {bad_step}: "), msg
    assert "reconstruction" in msg.split(";")[0], msg
    assert "contractive" not in msg  # the term that stayed finite is not blamed
    ckpts = os.path.join(wd, "checkpoints")
    last_good = (bad_step // 3) * 3
    assert checkpoint.latest_step(ckpts) == last_good
    restored, _, step, _ = checkpoint.restore_checkpoint(ckpts, model)
    assert step == last_good and all(np.isfinite(v).all() for v in _leaves(restored))


@pytest.mark.parametrize(
    "sig, raised, match",
    [(signal.SIGTERM, SystemExit, "143"), (signal.SIGINT, KeyboardInterrupt, "checkpoint saved")],
)
def test_a_signal_saves_the_step_reached_then_stops(sig, raised, match, tmp_path, monkeypatch):
    batch_at = train.batch_at

    def batch_at_then_signal(x, step, **kw):
        if step == 2:
            os.kill(os.getpid(), sig)
        return batch_at(x, step, **kw)

    monkeypatch.setattr(train.batches, "batch_at", batch_at_then_signal)  # its caller
    before = signal.getsignal(sig)
    with pytest.raises(raised, match=match):
        train.fit(_model(), OBJ, _data(), config=_config(num_steps=10), workdir=str(tmp_path))
    assert checkpoint.latest_step(os.path.join(tmp_path, "checkpoints")) == 3
    assert signal.getsignal(sig) is before  # the caller's handler is back


# A run slow enough to be killed mid-way: each step sleeps, and prints its number first.
KILLABLE = textwrap.dedent(
    """
    import os, sys, time
    import jax, numpy as np
    from aecore import train
    from aecore.models import make_autoencoder
    from aecore.objective import Objective

    workdir = sys.argv[1]
    x = np.random.default_rng(0).uniform(0, 1, (128, 4, 4, 1)).astype(np.float32)
    batch_at = train.batch_at

    def slow_batch_at(x, step, **kw):
        print("step", step, flush=True)
        time.sleep(0.01)
        return batch_at(x, step, **kw)

    train.batches.batch_at = slow_batch_at  # the source of fit's batches calls it there
    cfg = train.TrainConfig(num_steps=NUM_STEPS, batch_size=16, learning_rate=1e-2,
                            checkpoint_every=25, log_every=10, progress=False)
    model = make_autoencoder((4, 4, 1), hidden=(6,), key=0)
    obj = Objective(loss="cross_entropy", contractive=0.1)
    r = train.fit(model, obj, x, config=cfg, workdir=workdir)
    np.savez(os.path.join(workdir, "final.npz"), *[np.asarray(a) for a in jax.tree.leaves(r.model)])
    print("resumed_from", r.start_step, flush=True)
    """
)
NUM_STEPS = 100


@pytest.fixture(scope="module")
def uninterrupted():
    x = np.random.default_rng(0).uniform(0, 1, (128, 4, 4, 1)).astype(np.float32)
    cfg = train.TrainConfig(num_steps=NUM_STEPS, batch_size=16, learning_rate=1e-2, progress=False)
    obj = Objective(loss="cross_entropy", contractive=0.1)
    return train.fit(make_autoencoder((4, 4, 1), hidden=(6,), key=0), obj, x, config=cfg)


def _start(script, wd):
    return subprocess.Popen(
        [sys.executable, script, wd],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _steps_until(proc, step: int) -> list[int]:
    """The step numbers the run prints, read until it starts `step` (it is then still running)."""
    seen = []
    for line in proc.stdout:
        if line.startswith("step "):
            seen.append(int(line.split()[1]))
            if seen[-1] >= step:
                return seen
    raise AssertionError(f"the run ended at step {seen[-1] if seen else None}, before {step}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_parameters(sig, tmp_path, uninterrupted):
    script = str(tmp_path / "run.py")
    with open(script, "w") as f:
        f.write(KILLABLE.replace("NUM_STEPS", str(NUM_STEPS)))
    wd = str(tmp_path / "wd")
    ckpts = os.path.join(wd, "checkpoints")

    proc = _start(script, wd)
    # Step 32 starts after the checkpoint of step 25 was written; SIGTERM then lands between
    # periodic checkpoints, so the step it saves is the step reached.
    steps_run = _steps_until(proc, 32)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    steps_run += [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    saved = checkpoint.latest_step(ckpts)
    assert "resumed_from" not in out and saved < NUM_STEPS, "the run was not killed mid-way"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert saved == steps_run[-1] + 1 and saved > 32  # the step reached, not step 25
    else:
        assert proc.returncode == -signal.SIGKILL
        assert saved == 25  # the last periodic checkpoint
        assert steps_run[-1] >= 32  # work after it was lost, and is redone on resume

    proc = _start(script, wd)  # the same command again
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"resumed_from {saved}" in out, out
    with np.load(os.path.join(wd, "final.npz")) as z:
        final = [z[f"arr_{i}"] for i in range(len(z.files))]
    diff = max(
        float(np.max(np.abs(u - v)))
        for u, v in zip(final, _leaves(uninterrupted.model), strict=True)
    )
    print(f"{signal.Signals(sig).name} at step {saved}: max |param diff| = {diff:.3g}")
    assert diff <= 1e-6
    # The metric log spans the whole run once (records of the lost part were dropped).
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        logged = [int(line.split('"step": ')[1].split(",")[0].rstrip("}")) for line in f]
    assert logged == list(range(10, NUM_STEPS + 1, 10))


# --------------------------------------------------------------------------------------------
# Numerical edge cases stay finite (values and gradients).


def test_kl_sparsity_is_finite_at_rates_zero_and_one():
    for rate in (0.0, 1.0):
        h = jnp.full((8, 5), rate, jnp.float32)
        value, grad = jax.value_and_grad(
            lambda h: regularizers.kl_sparsity(h, rho=0.05, weight=1.0)
        )(h)
        assert np.isfinite(float(value)) and float(value) > 0
        assert np.all(np.isfinite(np.asarray(grad)))
        kl = regularizers.kl_divergence(0.05, jnp.array([rate], jnp.float32))
        assert np.all(np.isfinite(np.asarray(kl)))


def test_cross_entropy_is_finite_at_saturated_logits():
    logits = jnp.array([[1e4, -1e4, 88.0, -88.0, 1e30, -1e30]], jnp.float32)
    for x in (jnp.zeros_like(logits), jnp.ones_like(logits), jnp.full_like(logits, 0.5)):
        value, grad = jax.value_and_grad(lambda z, x=x: losses.sigmoid_cross_entropy(z, x).sum())(
            logits
        )
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    # The correct saturated prediction costs nothing; the wrong one costs |logit|.
    x = jnp.array([[1.0, 0.0]], jnp.float32)
    np.testing.assert_allclose(losses.sigmoid_cross_entropy(jnp.array([[1e4, -1e4]]), x), [0.0])
    np.testing.assert_allclose(
        losses.sigmoid_cross_entropy(jnp.array([[-1e4, 1e4]]), x), [2e4], rtol=1e-6
    )


@pytest.mark.parametrize("mode", ["closed_form", "jacrev", "jacfwd", "auto"])
def test_contractive_penalty_and_its_gradient_are_finite_when_saturated(mode):
    model = make_autoencoder((6,), hidden=(5,), activation="sigmoid", key=0)
    x = jnp.array([[1e3] * 6, [-1e3] * 6, [1e30] * 6], jnp.float32)

    def penalty(m):
        return regularizers.contractive(m.encode, x, weight=1.0, mode=mode).sum()

    value, grads = jax.jit(jax.value_and_grad(penalty))(model)
    assert np.isfinite(float(value)) and float(value) < 1e-6  # saturated units do not contract
    assert all(np.isfinite(g).all() for g in _leaves(grads))


@pytest.mark.parametrize("method", ["pca", "standardize", "unit"])
def test_normalize_with_zero_variance_features_is_finite(method):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 5)).astype(np.float32)
    x[:, 2] = 0.7  # a constant feature
    x_test = rng.uniform(size=(4, 5)).astype(np.float32)
    x_train_n, x_test_n, stats = normalize(x, x_test, method=method)
    assert np.all(np.isfinite(x_train_n)) and np.all(np.isfinite(x_test_n))
    if method != "unit":
        np.testing.assert_allclose(x_train_n[:, 2], 0.0, atol=1e-6)
    constant = np.full((10, 3), 2.0, np.float32)  # every feature constant
    assert np.all(np.isfinite(normalize(constant, method=method)[0]))

"""The `aecore` command with your own data and your own runs (issue #11): never crash after
training, never mix two runs, never lose results. The first run and the killed run go through the
real console script in a subprocess; the others call `aecore.cli.main` in-process, with the exit
status and stderr the console script would give.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from aecore import plots, train
from aecore import run as aerun
from aecore.checkpoint import Checkpointer
from aecore.cli import main
from aecore.models import make_autoencoder
from aecore.objective import Objective
from aecore.train.rundir import LOCK_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m aecore` runs `aecore.cli:cli`, the console script's entry point, from this checkout
# (an installed console script may belong to another checkout of the same venv).
AECORE = [sys.executable, "-m", "aecore"]
QUICK = ["--quick", "--config.train.num_steps=6", "--config.train.eval_every=3"]


def _console(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    """The real console script in a subprocess."""
    return subprocess.run(
        [*AECORE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=env,
    )


def _run(*args) -> subprocess.CompletedProcess:
    """`aecore ARGS` in-process: `main` as the console script calls it (errors are one stderr
    line and an exit status), returning what `subprocess.run` would."""
    argv = list(map(str, args))
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main(argv, exit_on_error=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(argv, code, stdout="", stderr=err.getvalue())


def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _tree_digest(root) -> str:
    """sha256 over every path, its bytes and its mtime under `root`: equal = byte-identical.

    The lock file aside: whoever takes the lock of a workdir writes its PID there.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if name == LOCK_FILE:
                continue
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode())
            digest.update(open(path, "rb").read())
            digest.update(str(os.stat(path).st_mtime_ns).encode())
    return digest.hexdigest()


def _metrics(wd) -> dict:
    with open(os.path.join(wd, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """`aecore train contractive --quick --data my.npy`: digits flattened to [300, 64]."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("userdata")
    x = (load_digits().data[:300] / 16.0).astype(np.float32)
    np.save(root / "my.npy", x)
    np.save(root / "other.npy", x[:200])
    np.save(root / "raw16.npy", load_digits().data[300:350].astype(np.float32))  # 0..16
    wd = root / "wd"
    proc = _console("train", "contractive", *QUICK, "--data", root / "my.npy", "--workdir", wd)
    return root, wd, proc


def test_features_npy_trains_writes_metrics_and_fitting_figures(features_run):
    root, wd, proc = features_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "warning:" not in proc.stderr, proc.stderr
    metrics = _metrics(wd)
    for key in ("reconstruction_error", "mean_jacobian_norm", "final_eval_reconstruction"):
        assert np.isfinite(metrics[key]), key
    assert metrics["steps"] == 6
    figures = metrics["figures"]
    # No image grid for vectors; a contractive run shows its spectrum and contraction curve.
    assert "filters" not in figures and not (wd / "filters.png").exists()
    for name in ("reconstruction_scatter", "spectrum", "contraction", "loss_curves"):
        assert os.path.getsize(figures[name]) > 1000, name
    record = json.loads((wd / "data.json").read_text())
    assert record["input_shape"] == [64] and (record["train_min"], record["train_max"]) == (0, 1)


def test_evaluate_keeps_the_keys_it_does_not_recompute(features_run):
    root, wd, _ = features_run
    before = _metrics(wd)
    proc = _run("evaluate", wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _metrics(wd)
    assert set(before) <= set(after)
    for key in ("final_eval_reconstruction", "wall_time_s", "steps"):
        assert after[key] == before[key], key
    np.testing.assert_allclose(after["reconstruction_error"], before["reconstruction_error"], 1e-5)
    assert after["evaluate_wall_time_s"] > 0


def test_encode_refuses_inputs_outside_the_training_range_unless_forced(features_run, capsys):
    root, wd, _ = features_run
    out = root / "codes.npy"
    before = _tree_digest(wd)
    proc = _run("encode", wd, "--data", root / "raw16.npy", "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = _errors(proc)
    assert "holds values in [0, 16], outside the range [0, 1]" in error, error
    assert "--allow-out-of-range" in error and "Traceback" not in proc.stderr
    assert not out.exists() and _tree_digest(wd) == before
    capsys.readouterr()
    argv = ["encode", str(wd), "--data", str(root / "raw16.npy"), "--out", str(out)]
    main([*argv, "--allow-out-of-range"])
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "outside the range [0, 1]" in warnings[0], warnings
    assert warnings[0].startswith("warning: ") and np.load(out).shape == (50, 64)
    # In range (the training file itself, and values within the margin): silent.
    x = np.load(root / "my.npy")
    np.save(root / "near.npy", x * 1.05)
    for data in ("my.npy", "near.npy"):
        argv = ["encode", str(wd), "--data", str(root / data), "--out", str(out), "--overwrite"]
        assert main(argv).shape == (300, 64)


def test_a_changed_config_is_refused_listing_the_keys_and_leaves_the_workdir_as_it_was(
    features_run,
):
    root, wd, _ = features_run
    before = _tree_digest(wd)
    argv = ["train", "contractive", *QUICK, "--workdir", wd]
    proc = _run(*argv, "--data", root / "my.npy", "--config.objective.contractive=5.0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert _errors(proc) == [proc.stderr.strip()], proc.stderr  # one line, nothing else
    error = _errors(proc)[0]
    assert error.startswith(
        f"error: {wd} holds a run with another config (objective.contractive: 0.1 -> 5.0); "
        "pass --resume-as-is to continue that run with its own config, --overwrite to delete"
    ), error
    assert _tree_digest(wd) == before


def test_every_changed_key_is_named_and_new_file_contents_count(features_run, capsys):
    root, wd, _ = features_run
    before = _tree_digest(wd)
    argv = ["train", "contractive", *QUICK, "--workdir", str(wd)]
    changed = ["--config.objective.contractive=5.0", "--config.train.learning_rate=0.01"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--data", str(root / "my.npy"), *changed], exit_on_error=True)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "(objective.contractive: 0.1 -> 5.0; train.learning_rate: 0.003 -> 0.01)" in err
    # Other data under the same config is another run too.
    with pytest.raises(SystemExit) as e:
        main([*argv, "--data", str(root / "other.npy")], exit_on_error=True)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "(data.name: " in err and "other.npy'" in err, err
    # The same file name holding other values is another run as well.
    os.replace(root / "my.npy", root / "my.npy.bak")
    try:
        np.save(root / "my.npy", np.load(root / "my.npy.bak")[::-1])
        with pytest.raises(SystemExit) as e:
            main([*argv, "--data", str(root / "my.npy")], exit_on_error=True)
    finally:
        os.replace(root / "my.npy.bak", root / "my.npy")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "(the values of data.name" in err and "sha256 changed" in err
    assert _tree_digest(wd) == before


def test_resume_as_is_continues_the_stored_run_and_overwrite_starts_over(
    features_run, tmp_path, capsys
):
    root, src, _ = features_run
    wd = tmp_path / "wd"
    shutil.copytree(src, wd)
    config = (wd / "config.json").read_text()
    argv = ["train", "contractive", *QUICK, "--data", str(root / "my.npy"), "--workdir", str(wd)]
    changed = [*argv, "--config.objective.contractive=5.0"]
    proc = _run(*changed, "--resume-as-is")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--resume-as-is: the run keeps its own config (objective.contractive" in proc.stderr
    assert (wd / "config.json").read_text() == config and _metrics(wd)["steps"] == 6
    (wd / "notes.txt").write_text("mine")
    main([*changed, "--overwrite"])
    assert "warning: --overwrite: deleted the earlier run in" in capsys.readouterr().err
    assert json.loads((wd / "config.json").read_text())["objective"]["contractive"] == 5.0
    assert (wd / "notes.txt").read_text() == "mine"  # only the run's own files are deleted
    with open(wd / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one run's records, not two
    # The same config again resumes, as before: nothing to train, the same metrics.
    first = _metrics(wd)
    again = main([*changed])
    assert again["steps"] == 6
    np.testing.assert_allclose(again["reconstruction_error"], first["reconstruction_error"], 1e-6)
    with pytest.raises(SystemExit):  # the flags exclude each other
        main([*changed, "--resume-as-is", "--overwrite"])


def test_csv_features_train(tmp_path):
    rows = np.random.default_rng(0).uniform(size=(400, 5))
    lines = ["a,b,c,d,e", *(",".join(f"{v:.5f}" for v in r) for r in rows)]
    (tmp_path / "my.csv").write_text("\n".join(lines) + "\n")
    wd = tmp_path / "wd"
    proc = _run("train", "contractive", *QUICK, "--data", tmp_path / "my.csv", "--workdir", wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" not in proc.stderr, proc.stderr
    figures = _metrics(wd)["figures"]
    assert {"reconstruction_scatter", "reconstructions", "spectrum", "contraction"} <= set(figures)
    assert "filters" not in figures


def test_swiss_roll_draws_its_3d_manifold(tmp_path):
    wd = tmp_path / "wd"
    proc = _run(
        "train",
        "contractive_higher_order",
        *QUICK,
        "--data",
        "swiss_roll",
        "--config.objective.loss=squared_error",
        "--config.model.output=identity",
        "--config.model.hidden=2",
        "--workdir",
        wd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" not in proc.stderr, proc.stderr
    metrics = _metrics(wd)
    assert np.isfinite(metrics["reconstruction_error"])
    for name in ("manifold", "codes", "spectrum", "contraction", "reconstruction_scatter"):
        assert os.path.getsize(metrics["figures"][name]) > 1000, name


def test_linear_is_full_batch_on_a_small_file(tmp_path):
    """`aecore train linear --data small.npy`: 142 examples, fewer than any fixed batch."""
    x = np.random.default_rng(0).normal(size=(142, 13)).astype(np.float32)
    np.save(tmp_path / "small.npy", x)
    wd = tmp_path / "wd"
    proc = _run(
        "train", "linear", "--data", tmp_path / "small.npy", "--workdir", wd,
        "--config.train.num_steps=30", "--config.train.progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((wd / "config.json").read_text())["train"]["batch_size"] is None
    metrics = _metrics(wd)
    assert metrics["steps"] == 30 and np.isfinite(metrics["pca_reconstruction_error"])
    assert json.loads((wd / "data.json").read_text())["num_train"] == 114  # one batch of all
    with Checkpointer(str(wd / "checkpoints")) as ckpt:  # the config is stored once, not here
        assert ckpt.read_meta()["config"] == {}


def test_encode_takes_the_real_valued_file_the_model_was_trained_on(tmp_path):
    """`aecore train linear --data wine.npy` (scikit-learn's wine, standardized), then `aecore
    encode` of wine.npy itself: its held-out split lies beyond the training split's range."""
    from sklearn.datasets import load_wine

    x = load_wine().data
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    np.save(tmp_path / "wine.npy", x)
    wd, out = tmp_path / "wd", str(tmp_path / "codes.npy")
    proc = _run(
        "train", "linear", "--data", tmp_path / "wine.npy", "--workdir", wd,
        "--config.train.num_steps=20", "--config.train.progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((wd / "data.json").read_text())
    assert record["data_min"] < record["train_min"] - 0.1 * (
        record["train_max"] - record["train_min"]
    )  # the case of the issue: the training split's range widened by 10% misses the file
    codes = main(["encode", str(wd), "--data", str(tmp_path / "wine.npy"), "--out", out])
    assert codes.shape[0] == 178 and np.isfinite(codes).all()
    x_far = x.copy()
    x_far[0, 0] = 1e3  # one extreme value cannot trip the check
    np.save(tmp_path / "far1.npy", x_far)
    out2 = str(tmp_path / "codes2.npy")
    assert main(["encode", str(wd), "--data", str(tmp_path / "far1.npy"), "--out", out2]).shape
    np.save(tmp_path / "x3.npy", 3 * x)  # wrongly scaled: many values far beyond
    proc = _run("encode", wd, "--data", tmp_path / "x3.npy", "--out", out, "--overwrite")
    assert proc.returncode == 2 and "% of the values (at most 1% may be)" in _errors(proc)[0]
    # A data.json written before the whole file's range was recorded still reads.
    old = {k: v for k, v in record.items() if k not in ("data_min", "data_max")}
    (wd / "data.json").write_text(json.dumps(old))
    argv = ["encode", str(wd), "--data", str(tmp_path / "wine.npy"), "--out", out, "--overwrite"]
    assert main(argv).shape
    assert _run("encode", wd, "--data", tmp_path / "x3.npy", "--out", out2).returncode == 2
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as text:
        main(["encode", "--help"])  # --help states the rule
    assert "more than 1% of the values lie beyond the [min, max]" in " ".join(
        text.getvalue().split()
    )


def test_batch_size_none_is_the_whole_training_set():
    x = np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32)
    obj = Objective(loss="squared_error")
    base = dict(num_steps=5, learning_rate=1e-2, log_every=1, progress=False)
    runs = [
        train.fit(
            make_autoencoder((6,), hidden=(3,), output="identity", key=0),
            obj,
            x,
            config=train.TrainConfig(batch_size=b, **base),
        )
        for b in (None, 40)
    ]
    leaves = [[np.asarray(v) for v in jax.tree.leaves(r.model)] for r in runs]
    assert all(np.array_equal(u, v) for u, v in zip(leaves[0], leaves[1], strict=True))
    assert runs[0].history[-1]["loss"] < runs[0].history[0]["loss"]  # it did train
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        train.TrainConfig(batch_size=0)


def test_a_figure_that_fails_is_one_warning_and_metrics_are_written_first(
    features_run, tmp_path, monkeypatch, capsys
):
    root, _, _ = features_run
    wd = tmp_path / "wd"
    seen = {}

    def broken(path, *args, **kwargs):
        seen["metrics_on_disk"] = os.path.exists(wd / "metrics.json")
        raise TypeError("Invalid shape (64,) for image data")

    monkeypatch.setattr(plots, "save_spectrum", broken)
    argv = ["train", "contractive", *QUICK, "--data", str(root / "my.npy"), "--workdir", str(wd)]
    metrics = main(argv, exit_on_error=True)
    err = capsys.readouterr().err
    assert seen == {"metrics_on_disk": True}
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: figure 'spectrum' not drawn: TypeError: Invalid shape (64,) for image data"
    ]
    assert "spectrum" not in metrics["figures"] and "contraction" in metrics["figures"]
    assert _metrics(wd)["figures"] == metrics["figures"]


def test_evaluate_restores_a_run_whose_metrics_were_lost(features_run, tmp_path):
    """A run that crashed after training (before this fix) has no metrics.json: evaluate
    writes it, with the last held-out reconstruction of the training log."""
    root, src, _ = features_run
    wd = tmp_path / "wd"
    shutil.copytree(src, wd)
    os.remove(wd / "metrics.json")
    metrics = main(["evaluate", str(wd)])
    with open(wd / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    assert metrics["final_eval_reconstruction"] == last["eval_reconstruction"]
    assert _metrics(wd)["steps"] == 6


def test_new_figures_validate_their_input(tmp_path):
    with pytest.raises(
        ValueError, match=r"points must be \[N, 3\] with N >= 1, got shape \(4, 2\)"
    ):
        plots.save_points_3d(tmp_path / "a.png", np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"got \(4, 3\) and \(4, 2\)"):
        plots.save_reconstruction_scatter(tmp_path / "a.png", np.zeros((4, 3)), np.zeros((4, 2)))
    x = np.random.default_rng(0).normal(size=(50, 3))
    assert os.path.getsize(plots.save_points_3d(tmp_path / "p.png", x, reconstructions=x)) > 0
    assert os.path.getsize(plots.save_reconstruction_scatter(tmp_path / "s.png", x, x)) > 0


# A features-data run through the console script, slowed down so it can be killed mid-way: a
# sitecustomize on PYTHONPATH (imported at interpreter start) makes each step sleep and print
# its number first. The resumed run is the same command, without the slowdown.
SLOW_STEPS = textwrap.dedent(
    """
    import os, time
    from aecore import train

    _batch_at = train.batch_at

    def slow_batch_at(x, step, **kw):
        print("step", step, flush=True)
        time.sleep(0.02)
        return _batch_at(x, step, **kw)

    train.batches.batch_at = slow_batch_at  # the source of fit's batches calls it there
    """
)


def test_killed_features_run_resumes_to_the_same_parameters(tmp_path):
    x = np.random.default_rng(1).uniform(size=(200, 5)).astype(np.float32)
    np.save(tmp_path / "feats.npy", x)
    argv = ["train", "undercomplete", "--quick", "--data", tmp_path / "feats.npy"]
    argv += ["--config.model.hidden=3", "--config.train.num_steps=100"]
    argv += ["--config.train.checkpoint_every=25", "--config.train.log_every=10"]
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), REPO])}
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*AECORE, *map(str, argv), "--workdir", str(wd)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:  # step 32 starts after the checkpoint of step 25 was written
        if line.startswith("step ") and int(line.split()[1]) >= 32:
            break
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (wd / "metrics.json").exists()
    with Checkpointer(str(wd / "checkpoints")) as ckpt:
        assert ckpt.latest_step() == 25

    resumed = _run(*argv, "--workdir", wd)  # the same command again, in-process
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    main([*map(str, argv), "--workdir", str(tmp_path / "straight")])  # never interrupted
    cfg = aerun.read_config(str(wd))
    assert cfg == aerun.read_config(str(tmp_path / "straight"))
    a, step_a = aerun.restore_model(str(wd), cfg, (5,))
    b, step_b = aerun.restore_model(str(tmp_path / "straight"), cfg, (5,))
    assert step_a == step_b == 100
    diff = max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert diff <= 1e-6, diff
    m_a, m_b = _metrics(wd), _metrics(tmp_path / "straight")
    np.testing.assert_allclose(m_a["reconstruction_error"], m_b["reconstruction_error"], 1e-5)
    with open(wd / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(10, 101, 10))

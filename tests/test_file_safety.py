"""A researcher's files are never silently damaged, deleted or mixed up (issue #36).

Checkpoint digests, the run marker, the workdir lock, data identity, CSV rules, `encode --out`
and environment failures. The command runs in-process (`main(..., exit_on_error=True)`: the
exit status and stderr of the console script) except where two processes are the point.
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from aecore import _checks, checkpoint, train
from aecore import run as aerun
from aecore.cli import _quiet_closed_loop, main
from aecore.data import DataConfig, load_dataset
from aecore.train import rundir
from aecore.train.rundir import LOCK_FILE, MARKER_FILE, RunDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["undercomplete", "--quick", "--config.train.num_steps=4"]
QUICK += ["--config.train.checkpoint_every=2", "--config.train.eval_every=0"]


def _snapshot(root) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under `root` with its bytes and mtime (the lock file aside)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = (b"", 0)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if f != LOCK_FILE:
                out[os.path.relpath(p, root)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


def _fails(argv, capsys, code=2) -> str:
    """Runs the command, expects exit status `code` and exactly one stderr line: returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv, exit_on_error=True)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`aecore train undercomplete --quick --data data/x.npy` with a relative --data path:
    digits flattened to [100, 64] in [0, 1]; checkpoints at steps 2 and 4."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("safety")
    os.makedirs(root / "data")
    np.save(root / "data" / "x.npy", (load_digits().data[:100] / 16).astype(np.float32))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["train", *QUICK, "--data", "data/x.npy", "--workdir", "wd"], exit_on_error=True)
    finally:
        os.chdir(cwd)
    return root, str(root / "wd")


@pytest.fixture
def run_copy(run, tmp_path):
    root, wd = run
    shutil.copytree(wd, tmp_path / "wd")
    return root, str(tmp_path / "wd")


# --------------------------------------------------------------------------------------------
# 1. Checkpoint integrity, on a model the user writes (plain flax.nnx layers) and its optax state.


class UserAE(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.enc = nnx.Linear(12, 5, rngs=rngs)
        self.dec = nnx.Linear(5, 12, rngs=rngs)


def _user_state(seed=0):
    model = UserAE(nnx.Rngs(seed))
    opt = optax.adam(1e-3)
    return model, opt.init(nnx.state(model, nnx.Param))


def _saved(tmp_path, steps=(1,)):
    model, opt_state = _user_state()
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    for s in steps:
        ckpt.save(s, model, opt_state)
    return ckpt, model, opt_state


def _stored_files(step_dir) -> list[str]:
    """The files holding the arrays of the model and of the optimizer state."""
    return sorted(
        os.path.join(d, f)
        for part in ("model", "opt_state")
        for d, _, files in os.walk(os.path.join(step_dir, part))
        for f in files
    )


def test_every_overwritten_byte_of_a_checkpoint_is_caught(tmp_path):
    """4 bytes overwritten at many offsets of every stored array file (model and optimizer
    state): each is refused before a value is read; restored, the step is exact again."""
    ckpt, model, opt_state = _saved(tmp_path)
    template = _user_state(seed=1)
    files = _stored_files(os.path.join(ckpt.directory, "1"))
    caught = tried = 0
    for path in files:
        original = open(path, "rb").read()
        offsets = np.unique(np.linspace(0, len(original) - 4, 10).astype(int))
        for offset in offsets:
            damaged = bytearray(original)
            damaged[offset : offset + 4] = bytes(b ^ 0x5A for b in damaged[offset : offset + 4])
            open(path, "wb").write(bytes(damaged))
            tried += 1
            with pytest.raises(checkpoint.CheckpointError, match=r"step 1 in .* is damaged"):
                # restore checks first (`verify`), before any value is read
                ckpt.restore(*template) if offset == offsets[0] else ckpt.verify(1)
            caught += 1
        open(path, "wb").write(original)
    assert caught == tried >= 100 and len(files) >= 10, (caught, tried, files)
    got, got_opt, step, _ = ckpt.restore(*template)
    for a, b in zip(
        jax.tree.leaves((model, opt_state)), jax.tree.leaves((got, got_opt)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Truncated, deleted or added files, and a lost digest file, are damage as well.
    step_dir = os.path.join(ckpt.directory, "1")
    for damage, message in [
        (lambda: os.truncate(files[0], 3), "changed since it was saved"),
        (lambda: os.remove(files[-1]), "missing"),
        (lambda: open(os.path.join(step_dir, "model", "extra"), "w").close(), "was added"),
        (lambda: os.remove(os.path.join(step_dir, checkpoint.DIGEST_FILE)), "is missing"),
    ]:
        shutil.copytree(step_dir, tmp_path / "keep")
        damage()
        with pytest.raises(checkpoint.CheckpointError, match=message):
            ckpt.restore(*template)
        shutil.rmtree(step_dir)
        shutil.move(tmp_path / "keep", step_dir)


def test_a_checkpoint_from_before_digests_loads_with_one_warning(tmp_path, capsys):
    ckpt, model, opt_state = _saved(tmp_path)
    step_dir = os.path.join(ckpt.directory, "1")
    os.remove(os.path.join(step_dir, checkpoint.DIGEST_FILE))
    meta_path = os.path.join(step_dir, "meta", "metadata")
    meta = json.load(open(meta_path))
    del meta["digest_file"]  # what aecore wrote before digests existed
    json.dump(meta, open(meta_path, "w"))
    capsys.readouterr()
    for _ in range(2):
        got, _, step, _ = ckpt.restore(*_user_state(seed=1))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "written before aecore recorded digests" in err[0], err
    np.testing.assert_array_equal(np.asarray(got.enc.kernel), np.asarray(model.enc.kernel))


def test_a_resume_skips_damaged_steps_or_refuses_when_none_is_intact(tmp_path):
    ckpt, model, _ = _saved(tmp_path, steps=(1, 2, 3))
    for step in (3, 2):
        path = _stored_files(os.path.join(ckpt.directory, str(step)))[0]
        with open(path, "r+b") as f:
            f.write(b"\0\0\0\0")
    with pytest.raises(checkpoint.CheckpointError, match="step 3 .* is damaged"):
        ckpt.restore(*_user_state(seed=1))  # evaluate and encode: refuse
    got, _, step, _ = ckpt.restore(*_user_state(seed=1), fallback=True)
    assert step == 1 and [s for s, _ in ckpt.skipped] == [3, 2]
    np.testing.assert_array_equal(np.asarray(got.dec.bias), np.asarray(model.dec.bias))
    shutil.rmtree(os.path.join(ckpt.directory, "1"))
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint in .*step 3: "):
        ckpt.restore(*_user_state(seed=1), fallback=True)


# --------------------------------------------------------------------------------------------
# 2. The run marker: --overwrite deletes only what aecore wrote, in a folder it marked.


def _foreign(root) -> str:
    """A folder holding files with a run's names that aecore never wrote."""
    folder = root / "foreign"
    os.makedirs(folder / "checkpoints")
    os.makedirs(folder / "tb")
    (folder / "config.json").write_text('{"lr": 0.1}')
    (folder / "metrics.json").write_text('{"acc": 0.9}')
    (folder / "checkpoints" / "epoch_99.pt").write_bytes(b"weights")
    (folder / "tb" / "notes.txt").write_text("mine")
    return str(folder)


def test_overwrite_refuses_a_folder_aecore_did_not_mark(tmp_path, capsys):
    folder = _foreign(tmp_path)
    before = _snapshot(folder)
    for flags in ([], ["--overwrite"], ["--resume-as-is"]):
        line = _fails(["train", *QUICK, "--workdir", folder, *flags], capsys)
        assert "holds files aecore did not write (config.json, metrics.json" in line, line
        assert "another config" not in line and "use another --workdir" in line
        assert _snapshot(folder) == before


class _Stop(Exception):
    """Raised instead of training: what --overwrite did is on disk by then."""


def test_overwrite_deletes_only_what_aecore_wrote(run_copy, monkeypatch, capsys):
    _, wd = run_copy
    mine = {
        "notes.txt": b"n",
        "checkpoints/epoch_99.pt": b"w",
        "tb/notes.txt": b"t",
    }
    for name, data in mine.items():
        open(os.path.join(wd, name), "wb").write(data)
    marker = json.load(open(os.path.join(wd, MARKER_FILE)))
    assert set(marker) == {"aecore_version", "run_id"}
    # A run from before the marker is recognised by its config.json and data.json.
    os.remove(os.path.join(wd, MARKER_FILE))
    assert aerun.is_aecore_run(wd)

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(aerun, "fit", stop)
    capsys.readouterr()
    with pytest.raises(_Stop):
        main(["train", *QUICK, "--workdir", wd, "--config.model.hidden=8", "--overwrite"])
    assert "--overwrite: deleted the earlier run" in capsys.readouterr().err
    for name, data in mine.items():
        assert open(os.path.join(wd, name), "rb").read() == data
    assert os.listdir(os.path.join(wd, "checkpoints")) == ["epoch_99.pt"]
    assert os.listdir(os.path.join(wd, "tb")) == ["notes.txt"]
    assert sorted(os.listdir(wd)) == sorted(
        ["aecore.lock", MARKER_FILE, "checkpoints", "config.json", "data.json", "notes.txt", "tb"]
    )
    assert json.load(open(os.path.join(wd, "config.json")))["model"]["hidden"] == [8]
    assert json.load(open(os.path.join(wd, MARKER_FILE)))["run_id"] != marker["run_id"]


# --------------------------------------------------------------------------------------------
# 3. One writer per workdir.


@contextlib.contextmanager
def _held_by_another(wd, pid: int):
    """The lock of `wd` held through another open file, as another process holds it."""
    with open(os.path.join(wd, LOCK_FILE), "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write(f"{pid}\n")
        f.flush()
        yield
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def test_a_second_train_exits_2_at_once_naming_the_holder(run_copy):
    """Two processes: this one holds the lock; `aecore train` in another exits 2 at once."""
    _, wd = run_copy
    before = _snapshot(wd)
    with _held_by_another(wd, os.getpid()):
        proc = subprocess.run(
            [sys.executable, "-m", "aecore", "train", *QUICK, "--workdir", wd],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: {wd} is being written by another aecore process (PID {os.getpid()}, holding "
        f"{wd}/{LOCK_FILE}); wait for it to finish, or use another --workdir"
    ]
    assert _snapshot(wd) == before


def test_a_stale_lock_never_blocks(run_copy):
    _, wd = run_copy
    with _held_by_another(wd, 4242):
        with pytest.raises(rundir.WorkdirBusy, match="PID 4242"):
            rundir.hold_lock(wd)
    # The lock file of a killed process (its PID, no lock held) does not block.
    assert open(os.path.join(wd, LOCK_FILE)).read() == "4242\n"
    rundir.hold_lock(wd)
    assert open(os.path.join(wd, LOCK_FILE)).read() == f"{os.getpid()}\n"
    rundir.release_lock(wd)


# --------------------------------------------------------------------------------------------
# 4. Data identity.


def test_evaluate_and_encode_refuse_changed_data_unless_allowed(run_copy, tmp_path, capsys):
    root, wd = run_copy
    record = json.load(open(os.path.join(wd, "data.json")))
    assert record["path"] == str(root / "data" / "x.npy") and record["num_examples"] == 100
    assert json.load(open(os.path.join(wd, "config.json")))["data"]["name"] == "data/x.npy"
    # From another directory the relative name misses; the recorded absolute path is used.
    _, _, data = aerun.load_run_data(wd, aerun.read_config(wd))
    assert data["same_as_training"] and data["path"] == record["path"]
    x = np.load(root / "data" / "x.npy")
    shutil.copy(root / "data" / "x.npy", tmp_path / "keep.npy")
    try:
        np.save(root / "data" / "x.npy", x[:50])  # the file changed: 100 -> 50 rows
        before = _snapshot(wd)
        out = str(tmp_path / "codes.npy")
        for argv in (["evaluate", wd], ["encode", wd, "--data", "digits", "--out", out]):
            line = _fails(argv, capsys)
            assert f"the data of {wd} changed since training" in line, line
            assert "now gives 50 examples" in line and "trained on 100" in line, line
            assert "--allow-different-data" in line and _snapshot(wd) == before
        capsys.readouterr()
        with _held_by_another(wd, 4242):  # evaluate while a train holds the lock: allowed
            metrics = main(["evaluate", wd, "--allow-different-data"], exit_on_error=True)
        assert "warning: the data of" in capsys.readouterr().err
        stored = json.load(open(os.path.join(wd, "metrics.json")))["data"]
        assert stored == metrics["data"] and not stored["same_as_training"]
        assert stored["num_examples"] == 50 and stored["sha256"] != record["sha256"]
    finally:
        shutil.copy(tmp_path / "keep.npy", root / "data" / "x.npy")


# --------------------------------------------------------------------------------------------
# 5. CSV files: no row lost, none invented, no index trained as a feature.


def _csv(tmp_path, text: str, name="d.csv", encoding="utf-8") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_csv_rows_are_never_lost_or_invented(tmp_path):
    rows = "".join(f"{i % 7},{(3 * i) % 5},{i % 2}\n" for i in range(20))
    expected = np.array([[i % 7, (3 * i) % 5, i % 2] for i in range(20)], np.float32)
    for name, text, encoding in [
        ("bom.csv", rows, "utf-8-sig"),  # a BOM before the first number
        ("header.csv", "a,b,c\n" + rows, "utf-8-sig"),
    ]:
        ds = load_dataset(_csv(tmp_path, text, name, encoding), test_fraction=0.25)
        got = np.concatenate([ds.x_train, ds.x_test])
        assert len(got) == 20
        order, want = np.lexsort(got.T[::-1]), np.lexsort(expected.T[::-1])
        np.testing.assert_array_equal(got[order], expected[want])
    _, stats = aerun.load_data(DataConfig(name=_csv(tmp_path, rows), test_fraction=0.25))
    assert stats["record"]["num_examples"] == 20  # data.json records every row read


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,,3\n4,5,6\n", r"line 1, column 2: is empty"),
        ("1,NA,3\n4,5,6\n", r"line 1, column 2: 'NA' is a missing value"),
        ("a,b\n1,2\n3,n/a\n", r"line 3, column 2 \('b'\): 'n/a' is a missing value"),
        ("x,1,2\n3,4,5\n", r"line 1, column 1: 'x' is not a number"),  # a header is all text
        # What pandas' DataFrame.to_csv writes by default: its index, under a blank header.
        (",a,b\n0,1,2\n1,3,4\n", r"column 1 has the blank header '' of a pandas row index"),
        ("Unnamed: 0,a\n0,1\n1,3\n", r"blank header 'Unnamed: 0' of a pandas row index"),
        ("0,5,6\n1,7,8\n2,9,1\n", r"column 1 holds 0, 1, \.\.\., 2, a row index"),
        ("1;2;3\n4;5;6\n", r"line 2 is one cell holding ';'-separated values"),
    ],
)
def test_csv_problems_are_refused_naming_the_cell(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as e:
        load_dataset(_csv(tmp_path, text))
    assert len(str(e.value)) < 300 + len(str(tmp_path))


# --------------------------------------------------------------------------------------------
# 6. encode --out.


def test_encode_out_never_overwrites_and_prints_the_path_written(run, tmp_path, capsys):
    root, wd = run
    data = str(tmp_path / "in.npy")
    shutil.copy(root / "data" / "x.npy", data)
    before = open(data, "rb").read()
    for flags in ([], ["--overwrite"]):
        line = _fails(["encode", wd, "--data", data, "--out", data, *flags], capsys)
        assert line == f"error: --out {data} is the --data file; write the codes to another file"
    assert open(data, "rb").read() == before
    capsys.readouterr()
    codes = main(["encode", wd, "--data", data, "--out", str(tmp_path / "enc")])
    assert f"to {tmp_path}/enc.npy\n" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "enc.npy"), codes)
    line = _fails(["encode", wd, "--data", data, "--out", str(tmp_path / "enc")], capsys)
    assert line == (
        f"error: --out {tmp_path}/enc.npy exists; pass --overwrite to replace it, or another --out"
    )
    main(["encode", wd, "--data", data, "--out", str(tmp_path / "enc.npy"), "--overwrite"])
    # Unusable inputs: one line each.
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    os.makedirs(tmp_path / "dir.npy")
    for bad, message in [
        (tmp_path / "dir.npy", "is a directory, not a .npy file"),
        (tmp_path, "is a directory, not a data file"),
        (tmp_path / "loop.npy", "is a symbolic link to nothing"),
        (tmp_path / "empty.npy", "is empty (0 bytes)"),
    ]:
        line = _fails(["encode", wd, "--data", str(bad), "--out", str(tmp_path / "c2")], capsys)
        assert message in line, line


# --------------------------------------------------------------------------------------------
# 7. Environment failures are one line.


def _mount_tmpfs(path, options) -> bool:
    os.makedirs(path, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    except OSError:
        return False
    return done.returncode == 0


def test_a_full_disk_is_one_error_line_naming_the_file_and_what_was_kept(tmp_path, capsys):
    """A real full disk (a 300 KB tmpfs: the step 2 checkpoint fits, step 4 does not)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=300k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        wd = str(disk / "wd")
        argv = ["train", *QUICK, "--config.train.num_steps=40", "--workdir", wd]
        line = _fails([*argv, "--config.train.checkpoint_every=10"], capsys, code=1)
        assert line.startswith(f"error: could not write {wd}/checkpoints/"), line
        assert "(No space left on device); kept: checkpoint step " in line, line
        kept = int(line.split("kept: checkpoint step ")[1].split()[0])
        assert checkpoint.latest_step(os.path.join(wd, "checkpoints")) == kept
        assert not os.path.exists(os.path.join(wd, "metrics.json"))
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_run_whose_metrics_cannot_be_written_never_reports_success(run_copy, monkeypatch, capsys):
    root, wd = run_copy
    monkeypatch.chdir(root)  # where the run's relative --data path resolves

    def full_disk(path, *args, **kwargs):  # the disk fills up as metrics.json is written
        if os.fspath(path).endswith(rundir.METRICS_FILE + ".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "open", full_disk, raising=False)
    line = _fails(["train", *QUICK, "--data", "data/x.npy", "--workdir", wd], capsys, code=1)
    assert line.startswith(f"error: could not write {wd}/metrics.json (No space left on device)")
    assert "kept: the checkpoints" in line and f"aecore evaluate {wd}" in line
    assert "metrics and figures in" not in capsys.readouterr().out


def test_unusable_workdirs_and_values_are_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    os.makedirs(tmp_path / "links")
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "links" / "metrics.json")
    fresh = str(tmp_path / "fresh")
    cases = [
        (["--workdir", str(tmp_path / "file")], "is a file, not a folder"),
        (["--workdir", str(tmp_path / "file" / "wd")], f"{tmp_path}/file is a file"),
        (["--workdir", str(tmp_path / "links")], "is a symbolic link"),
        (["--workdir", fresh, "--config.train.seed=-1"], "train.seed must be an integer >= 0"),
        (["--workdir", fresh, "--join-timeout", "0"], "--join-timeout must be a number of"),
        (["--workdir", fresh, "--join-timeout", "-1"], "seconds > 0, got -1.0"),
        (["--workdir", fresh, "--config.model.dtype=float16"], "supported: 'float32'"),
        (["--workdir", fresh, "--config.model.dtype=bfloat16"], "model.dtype 'bfloat16' is"),
    ]
    for extra, message in cases:
        line = _fails(["train", *QUICK, *extra], capsys)
        assert message in line, line
    assert not os.path.exists(fresh)
    assert (tmp_path / "elsewhere.json").read_text() == "{}"
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, "size=100k,ro"):
        try:
            line = _fails(["train", *QUICK, "--workdir", str(ro / "wd")], capsys)
            assert f"is not writable ({ro} is read-only" in line, line
        finally:
            subprocess.run(["umount", str(ro)])


def test_damaged_array_files_are_named_in_one_line(tmp_path):
    (tmp_path / "zero.npy").write_bytes(b"")
    (tmp_path / "zero.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("not a zip")
    # A header claiming 10^6 x 10^6 float32 values over 8 bytes of data.
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 8)
    np.savez(tmp_path / "inner.npz", x=np.zeros((4, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "inner.npz", "a") as z:  # a member with the same lie
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 8)
    for name, message in [
        ("zero.npy", "is empty (0 bytes)"),
        ("zero.npz", "is empty (0 bytes)"),
        ("text.npz", "is not a readable NumPy .npz file (BadZipFile"),
        ("huge.npy", "header claims shape (1000000, 1000000) of float32 (4000000000000 bytes)"),
        ("inner.npz", "y.npy is damaged: its header claims shape (1000000, 1000000)"),
    ]:
        with pytest.raises(ValueError) as e:
            load_dataset(str(tmp_path / name))
        assert f"{name}'" in str(e.value) and message in str(e.value), str(e.value)


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_with_one_warning(run_copy, capsys):
    """What a power loss leaves: the resume drops the torn line, warns once, goes on from the
    checkpoint (the truth), and rewrites the log whole."""
    _, wd = run_copy
    history = os.path.join(wd, rundir.HISTORY_FILE)
    steps = [json.loads(line)["step"] for line in open(history)]
    with open(history, "a") as f:
        f.write('{"step": 6, "loss": 0.1')
    config = aerun.read_config(wd)
    model = aerun.build_model(config, (64,))
    opt_state = train.init_optimizer(train.make_optimizer(config.train), model)
    writer = rundir.RunWriter(wd, keep=3, config=None)
    capsys.readouterr()
    try:
        _, _, start, records = writer.resume(model, opt_state)
    finally:
        writer.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"dropped its torn last line {len(steps) + 1}" in err[0], err
    assert start == 4 and [r["step"] for r in records] == steps and steps[-1] == 4
    assert [json.loads(line)["step"] for line in open(history)] == steps
    with open(history, "r+") as f:  # damage before the last line is not guessed at
        lines = f.readlines()
        f.seek(0)
        f.writelines(["{torn\n", *lines])
    with pytest.raises(ValueError, match=f"{history}: line 1 is not a JSON record"):
        RunDir(wd).history()


def test_messages_name_the_file_and_carry_no_noise(tmp_path, capsys):
    os.makedirs(tmp_path / "wd")
    (tmp_path / "wd" / "config.json").write_text("{not json")
    line = _fails(["evaluate", str(tmp_path / "wd")], capsys)
    assert line.startswith(f"error: {tmp_path}/wd/config.json is not valid JSON"), line
    # tensorstore's errors can carry a pybind11 method's repr; the one-line form drops it.
    e = ValueError("DATA_LOSS: Error reading <bound method pybind11_object.x of <Spec>>: eof")
    assert _checks.one_line(e, limit=200) == "ValueError: DATA_LOSS: Error reading : eof"
    e = Exception(
        "Error reading (0, 1). See full TensorStore details: <bound method pybind11_x.spec "
        "of TensorStore({\n  'driver': 'zarr'})>."
    )
    assert _checks.one_line(e, limit=200) == "Exception: Error reading (0, 1)."
    # orbax's "Event loop is closed" reports are dropped; any other one is still reported.
    seen = []
    hook = _quiet_closed_loop(seen.append)

    class Unraisable:
        def __init__(self, e, obj=None):
            self.exc_value, self.exc_traceback, self.object = e, e.__traceback__, obj

    async def read():  # a coroutine of this file, not of orbax
        pass

    hook(Unraisable(RuntimeError("Event loop is closed")))
    mine = read()
    hook(Unraisable(ValueError("something else"), mine))
    mine.close()
    assert [str(u.exc_value) for u in seen] == ["something else"]


def test_a_damaged_earlier_line_of_metrics_jsonl_is_refused_by_the_command(
    run_copy, monkeypatch, capsys
):
    root, wd = run_copy
    monkeypatch.chdir(root)
    history = os.path.join(wd, rundir.HISTORY_FILE)
    lines = open(history).readlines()
    open(history, "w").writelines(["{torn\n", *lines])
    before = _snapshot(wd)
    line = _fails(["train", *QUICK, "--data", "data/x.npy", "--workdir", wd], capsys)
    assert line.startswith(f"error: {history}: line 1 is not a JSON record"), line
    assert _snapshot(wd) == before

"""Multi-process data-parallel training on JAX's distributed runtime, with real processes.

Two processes on 127.0.0.1 (two virtual CPU devices each, gloo collectives) train the same
model as one process with four devices; killing one ends the other cleanly; a run resumed by
two processes (or by one) equals the uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return env


def _start(coordinator, n, i, workdir, num_steps, out, slow_s=0.0) -> subprocess.Popen:
    args = [sys.executable, WORKER, coordinator, str(n), str(i), str(workdir), str(num_steps)]
    return subprocess.Popen(
        [*args, str(out), str(slow_s)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(n: int, workdir, num_steps: int, out) -> None:
    coordinator = f"127.0.0.1:{_free_port()}" if n > 1 else "-"
    procs = [_start(coordinator, n, i, workdir, num_steps, out) for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, err[-2000:]


def _params(path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files) if k.startswith("arr_")]


def _assert_same(a, b, atol):
    pa, pb = _params(a), _params(b)
    assert len(pa) == len(pb)
    worst = max(float(np.max(np.abs(u - v))) for u, v in zip(pa, pb, strict=True))
    assert worst <= atol, f"largest parameter difference {worst:g} > {atol:g}"
    return worst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    d = tmp_path_factory.mktemp("one")
    _run(1, d / "run", 20, d / "params.npz")
    return d / "params.npz"


def test_two_processes_train_like_one(tmp_path, one_process):
    _run(2, tmp_path / "run", 20, tmp_path / "params.npz")
    # Same global batches and keys; only the all-reduce order differs: float32 round-off.
    _assert_same(one_process, tmp_path / "params.npz", atol=1e-5)
    with np.load(tmp_path / "params.npz") as f:
        assert int(f["step"]) == 20 and int(f["start"]) == 0
    # Process 0 alone writes the metric log: one record per logged step, no duplicates.
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        steps = [line.split('"step": ')[1].split(",")[0] for line in f if line.strip()]
    assert steps == ["5", "10", "15", "20"]


def test_killed_peer_ends_the_other_cleanly_and_the_run_resumes(tmp_path, one_process):
    coordinator = f"127.0.0.1:{_free_port()}"
    run = tmp_path / "run"
    procs = [_start(coordinator, 2, i, run, 20, tmp_path / "p.npz", slow_s=0.3) for i in (0, 1)]
    ckpts = run / "checkpoints"
    deadline = time.monotonic() + TIMEOUT_S
    while not (ckpts / "10").is_dir():  # let it get past a checkpoint
        assert time.monotonic() < deadline, "no checkpoint appeared"
        assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=10)
    assert time.monotonic() - killed_at < 60
    assert procs[0].returncode == 3, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("aecore:")]
    assert len(lines) == 1 and "process(es) 1 of 2 left the run" in lines[0], err[-2000:]
    assert "Traceback" not in err
    # The last checkpoint stays restorable: two processes resume it and finish the run ...
    _run(2, run, 20, tmp_path / "resumed.npz")
    with np.load(tmp_path / "resumed.npz") as f:
        assert 10 <= int(f["start"]) < 20 and int(f["step"]) == 20
    # ... with the parameters of the uninterrupted run.
    _assert_same(one_process, tmp_path / "resumed.npz", atol=1e-5)


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path, one_process):
    _run(2, tmp_path / "run", 10, tmp_path / "half.npz")
    _run(1, tmp_path / "run", 20, tmp_path / "params.npz")
    with np.load(tmp_path / "params.npz") as f:
        assert int(f["start"]) == 10 and int(f["step"]) == 20
    _assert_same(one_process, tmp_path / "params.npz", atol=1e-5)


def test_a_peer_that_never_arrives_ends_with_one_line(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = _env()
    script = (
        "import sys; from aecore import distributed; "
        f"distributed.initialize({coordinator!r}, 2, 0, join_timeout_s=3)"
    )
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 40
    assert p.returncode == 3
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("aecore:")]
    assert len(lines) == 1 and "process 1 is missing" in lines[0], p.stderr[-2000:]


def test_readme_multihost_command_runs_as_written(tmp_path):
    """README's two-process command (its interpreter's aecore and a free port put in)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        text = f.read()
    block = text.split("<!-- multihost-command -->", 1)[1].split("```bash\n", 1)[1]
    command = block.split("```", 1)[0].strip()
    assert ".venv/bin/aecore" in command and "127.0.0.1:29517" in command
    bindir = os.path.dirname(sys.executable)
    command = command.replace(".venv/bin/", f"{bindir}/").replace("29517", str(_free_port()))
    started = time.monotonic()
    p = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert time.monotonic() - started < TIMEOUT_S
    run = tmp_path / "runs" / "multihost"
    with open(run / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["steps"] == 20 and np.isfinite(metrics["reconstruction_error"])
    assert p.stdout.count("metrics and figures in") == 1  # process 0 alone reports

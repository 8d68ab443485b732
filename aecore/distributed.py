"""Runs over several processes and machines on JAX's own distributed runtime.

`initialize` joins a run (explicit arguments, AECORE_* environment variables, or the cluster JAX
detects: SLURM, Open MPI, Kubernetes), `PeerLost` names a process that died or never arrived.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import jax

from aecore import _checks

ENV_COORDINATOR = "AECORE_COORDINATOR"  # host:port where process 0 serves the run
ENV_NUM_PROCESSES = "AECORE_NUM_PROCESSES"
ENV_PROCESS_ID = "AECORE_PROCESS_ID"
EXIT_PEER_LOST = 3  # the exit status of a process whose peers are gone

_state: dict[str, object] = {}


class PeerLost(RuntimeError):
    """Another process of a multi-process run died or never arrived (names which, when known)."""


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def settings(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[str | None, int | None, int | None]:
    """The run's (coordinator, num_processes, process_id): arguments first, then AECORE_* vars."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if num_processes is not None:
        _checks.check_int("num_processes", num_processes, low=1)
    if process_id is not None and num_processes is not None:
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be in [0, {num_processes}) for {num_processes} processes, "
                f"got {process_id}"
            )
    return coordinator, num_processes, process_id


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    join_timeout_s: float = 60.0,
    heartbeat_timeout_s: int = 10,
) -> bool:
    """Joins a multi-process run through `jax.distributed.initialize`, once per process.

    Call it before anything touches a JAX device. With no coordinator given (argument or
    AECORE_COORDINATOR) and `auto=False`, the run is a single process and nothing happens. With
    `auto=True` and nothing given, JAX's cluster auto-detection fills in what is missing
    (SLURM, Open MPI, Kubernetes, Cloud TPU).

    On CPU the collectives run over gloo (TCP), so the same code trains across CPU processes and
    machines. Failed peers raise `PeerLost` in the survivors (JAX's recoverable mode) instead of
    aborting them, and a run whose processes do not all arrive within `join_timeout_s` ends each
    waiting process with a one-line message and exit status 3.

    Args:
      coordinator: "host:port" of process 0 (it serves the run there).
      num_processes: how many processes take part.
      process_id: this process's index in [0, num_processes).
      auto: use JAX's cluster auto-detection for whatever is not given.
      join_timeout_s: how long to wait for every process to arrive.
      heartbeat_timeout_s: after how long without a heartbeat a process counts as dead.

    Returns:
      True when this process is part of a multi-process run (or already was), else False.
    """
    if _state.get("initialized"):
        return True
    coordinator, num_processes, process_id = settings(coordinator, num_processes, process_id)
    if coordinator is None and not auto:
        if num_processes not in (None, 1):
            raise ValueError(
                f"{num_processes} processes need a coordinator address (host:port of process 0): "
                f"pass --coordinator or set {ENV_COORDINATOR}"
            )
        return False
    # Both must be set before JAX creates its CPU client: gloo gives CPU processes collectives,
    # recoverability turns a dead peer into a Python error here instead of a C++ abort.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_recoverability", True)
    who = "this process" if process_id is None else f"process {process_id}"
    expected = "all processes" if num_processes is None else f"all {num_processes} processes"
    where = coordinator or "the auto-detected coordinator"

    def give_up() -> None:
        # JAX's own timeout aborts the process with a C++ stack trace; this says it in one line.
        print(
            f"aecore: {who}: not {expected} joined the run at {where} within "
            f"{join_timeout_s:.0f} s{_absent(process_id, num_processes)}; start every process "
            "with the same coordinator address and process count",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_PEER_LOST)

    timer = threading.Timer(join_timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(join_timeout_s) + 30,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    finally:
        timer.cancel()
    _state["initialized"] = True
    return True


def _absent(process_id: int | None, num_processes: int | None) -> str:
    """Which peer is missing, where it can be told: with two processes, the other one."""
    if num_processes == 2 and process_id is not None:
        return f" (process {1 - process_id} is missing)"
    return ""


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def missing_processes() -> list[int]:
    """The processes of this run the coordinator no longer sees alive ([] in a 1-process run)."""
    if not is_multiprocess():
        return []
    from jax._src import distributed  # the client's liveness query has no public wrapper yet

    client: Any = distributed.global_state.client  # set in a multi-process run
    everyone = list(range(jax.process_count()))
    try:
        live = client.get_live_nodes(everyone)
    except Exception:  # the coordinator (process 0) itself is gone: the one we can name
        return [0] if jax.process_index() else []
    return [p for p in everyone if p not in live]


def peer_lost(step: int, cause: BaseException, checkpoint: str | None) -> PeerLost:
    """The one-line error for a collective that failed because a peer went away."""
    gone = missing_processes()
    names = ", ".join(str(p) for p in gone) if gone else "unknown"
    kept = f"; the last checkpoint in {checkpoint} is kept" if checkpoint else ""
    first = " ".join(str(cause).split())[-160:]
    return PeerLost(
        f"process(es) {names} of {jax.process_count()} left the run at step {step} "
        f"(this is process {jax.process_index()}){kept}; cause: {first}"
    )


def shutdown(timeout_s: float = 60.0) -> None:
    """Leaves the run cleanly; a no-op in a one-process run.

    In recoverable mode JAX's own shutdown does not wait for the other processes, and process 0
    serves the run: if it left first, the others' goodbyes would find no one and abort them. So
    everyone meets at a barrier, the others leave, and process 0 leaves once it sees them gone.
    """
    if not _state.pop("initialized", None):
        return
    from jax._src import distributed

    client: Any = distributed.global_state.client  # set: this process initialized the run
    client.wait_at_barrier("aecore_shutdown", int(timeout_s * 1000), None)
    if jax.process_index() == 0:
        everyone = list(range(jax.process_count()))
        deadline = time.monotonic() + timeout_s
        while len(client.get_live_nodes(everyone)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    jax.distributed.shutdown()

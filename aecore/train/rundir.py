"""The run directory: the one place that names a run's files, and the one reader and writer of
its metric history (metrics.jsonl), checkpoints and TensorBoard events while training.

WORKDIR/
  aecore_run.json  the marker: this folder holds a run aecore wrote (aecore version, run id)
  aecore.lock      locked (fcntl.flock) by the one process writing the run; holds its PID
  config.json      the run's config (`aecore.run`), stored once
  data.json        the training data's shape, value range and sha256
  checkpoints/     model and optimizer state (`aecore.checkpoint`)
  metrics.jsonl    one record per logged step (`fit`)
  tb/              TensorBoard scalars of the same records
  metrics.json     the evaluated run (`aecore.run`), then the figures' paths
  <figure>.png     the figures that fit the data
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from typing import Any

import jax
from jax.experimental import multihost_utils

from aecore import _checks
from aecore.checkpoint import Checkpointer

MARKER_FILE = "aecore_run.json"
LOCK_FILE = "aecore.lock"
CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "metrics.jsonl"
TB_DIR = "tb"
METRICS_FILE = "metrics.json"
FIGURES = (
    "reconstructions",
    "reconstruction_scatter",
    "filters",
    "manifold",
    "codes",
    "loss_curves",
    "spectrum",
    "contraction",
)
# Everything a run writes into its workdir: what `--overwrite` deletes (and nothing else).
RUN_FILES = (
    MARKER_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    DATA_FILE,
    HISTORY_FILE,
    CHECKPOINT_DIR,
    TB_DIR,
    *(f"{name}.png" for name in FIGURES),
)
# What aecore itself writes inside checkpoints/ and tb/: `--overwrite` deletes these only.
_OWN_CHECKPOINT_ENTRY = re.compile(r"^\d+(\.orbax-checkpoint-tmp-\d+|\.damaged(\.\d+)?)?$")
_OWN_TB_ENTRY = re.compile(r"^events\.out\.tfevents\.")


class WorkdirBusy(ValueError):
    """Another process holds the workdir's lock (the message names its PID)."""


class StorageError(RuntimeError):
    """Writing a run's file failed (disk full, read-only, ...): the message names the file and
    what was kept; the `aecore` command prints it as one line and exits with code 1."""


# The lock of each workdir this process holds: (realpath -> open file), kept for its life.
_HELD_LOCKS: dict[str, Any] = {}


def hold_lock(workdir: str, *, create: bool = True) -> None:
    """Takes WORKDIR/aecore.lock (fcntl.flock) until `release_lock` or the process ends.

    The OS releases it when the process ends, however it ends, so a lock left by a killed
    process never blocks. Only process 0 of a multi-process run takes it; the file then holds
    its PID. Without `create`, only a lock file that exists is taken (nothing is written into
    a folder before a run is validated). Taking a lock this process holds does nothing. A
    filesystem without locks (some network mounts) costs a warning.

    Raises:
      WorkdirBusy: another process holds the lock (names its PID); nothing was written.
    """
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _HELD_LOCKS or (not create and not os.path.isfile(path)):
        return
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            f.close()
            _checks.warn(f"cannot lock {path} ({e.strerror}): two runs here would not be stopped")
            return
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise WorkdirBusy(
            f"{workdir} is being written by another aecore process (PID {holder}, holding "
            f"{path}); wait for it to finish, or use another --workdir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD_LOCKS[key] = f


def release_lock(workdir: str) -> None:
    """Releases WORKDIR/aecore.lock if this process holds it (the file stays)."""
    f = _HELD_LOCKS.pop(os.path.realpath(os.path.join(workdir, LOCK_FILE)), None)
    if f is not None:
        f.close()  # closing the one descriptor drops the flock


def _own_entries(path: str, pattern: re.Pattern) -> list[str]:
    return sorted(n for n in os.listdir(path) if pattern.match(n))


def _remove_tree_entries(path: str, pattern: re.Pattern) -> bool:
    """Deletes the entries of `path` aecore writes (`pattern`), then `path` if left empty."""
    for name in _own_entries(path, pattern):
        entry = os.path.join(path, name)
        shutil.rmtree(entry) if os.path.isdir(entry) else os.remove(entry)
    if os.listdir(path):
        return False
    os.rmdir(path)
    return True


class RunDir:
    """The files of one run under `path` (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)

    def file(self, name: str) -> str:
        """The path of one of the run's files (`CONFIG_FILE`, ...)."""
        return os.path.join(self.path, name)

    def figure(self, name: str) -> str:
        """The path of figure `name` (one of `FIGURES`)."""
        return self.file(f"{name}.png")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in file `name`, or None when the file does not exist.

        Raises:
          ValueError: the file is not a JSON object (names the file).
        """
        path = self.file(name)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                value = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({_checks.one_line(e)})") from e
        except IsADirectoryError:
            raise ValueError(f"{path} is a directory, not a JSON file") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
        return value

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        """Writes `value` to file `name` atomically (a temporary file, then a rename).

        Raises:
          StorageError: the file could not be written (the old one, if any, is left intact).
        """
        path = self.file(name)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(value, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise storage_error(path, e) from e

    def history(self, upto: int | None = None, *, warn: bool = True) -> list[dict] | None:
        """The records of metrics.jsonl (those up to step `upto` if given), or None without one.

        Records after `upto` belong to a part of a run that was lost (not checkpointed). A
        torn last line (what a power loss leaves) is dropped with a one-line warning (`warn`):
        the checkpoint, not the log, is the truth. A damaged line before the last one raises.

        Raises:
          ValueError: a line other than the last is not a JSON record (names file and line).
        """
        path = self.file(HISTORY_FILE)
        if not os.path.exists(path):
            return None
        with open(path, errors="replace") as f:
            lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
        records = []
        for k, (i, line) in enumerate(lines):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if k < len(lines) - 1:
                    raise ValueError(
                        f"{path}: line {i} is not a JSON record ({_checks.one_line(e)}); "
                        "delete that line to resume"
                    ) from None
                if warn:
                    _checks.warn(f"{path}: dropped its torn last line {i} (an interrupted write)")
                continue
            records.append(record)
        return records if upto is None else [r for r in records if r.get("step", 0) <= upto]

    def marker(self) -> dict[str, Any] | None:
        """The run marker (aecore version, run id) aecore wrote here, or None."""
        return self.read_json(MARKER_FILE)

    def mark(self) -> None:
        """Writes the run marker once: this folder holds a run aecore wrote."""
        if os.path.exists(self.file(MARKER_FILE)):
            return
        from aecore import __version__

        self.write_json(MARKER_FILE, {"aecore_version": __version__, "run_id": uuid.uuid4().hex})

    def present(self) -> list[str]:
        """The names of `RUN_FILES` that exist here (whoever wrote them)."""
        return [n for n in RUN_FILES if os.path.lexists(self.file(n))]

    def symlinks(self) -> list[str]:
        """The names of `RUN_FILES` here that are symbolic links (never written through)."""
        return [n for n in RUN_FILES if os.path.islink(self.file(n))]

    def checkpointer(self, *, max_to_keep: int = 3) -> Checkpointer:
        return Checkpointer(self.file(CHECKPOINT_DIR), max_to_keep=max_to_keep)

    def has_checkpoint_dir(self) -> bool:
        return os.path.isdir(self.file(CHECKPOINT_DIR))

    def remove_run(self) -> list[str]:
        """Deletes the files aecore wrote (`RUN_FILES`); others stay. Returns those deleted.

        Inside checkpoints/ only step folders (`<step>`, orbax's temporaries, damaged steps
        set aside) and inside tb/ only TensorBoard event files go; a folder is removed when
        nothing else is left in it. The caller checks first that aecore wrote this folder.
        """
        removed = []
        for name in RUN_FILES:
            path = self.file(name)
            if (
                name in (CHECKPOINT_DIR, TB_DIR)
                and os.path.isdir(path)
                and not os.path.islink(path)
            ):
                own = _OWN_CHECKPOINT_ENTRY if name == CHECKPOINT_DIR else _OWN_TB_ENTRY
                if _own_entries(path, own) or not os.listdir(path):
                    _remove_tree_entries(path, own)
                    removed.append(name)
            elif os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
                removed.append(name)
        return removed


class RunWriter:
    """What `fit` writes while training: checkpoints, metrics.jsonl and TensorBoard scalars.

    Without a workdir it keeps nothing. In a multi-process run every process saves its part of
    each checkpoint; only the lead process (0) writes metric records.
    """

    def __init__(self, workdir: str | None, *, keep: int, config: dict | None):
        self.run = None if workdir is None else RunDir(workdir)
        # The one process that logs, draws a progress bar and writes files other than checkpoints.
        self.lead = jax.process_index() == 0
        self.multiprocess = jax.process_count() > 1
        # Only what the caller asks for: a run's config lives once, beside its checkpoints
        # (aecore.run writes WORKDIR/config.json), not again in every step.
        self._config = config or {}
        self._ckpt: Any = None  # the run's Checkpointer, when there is a run
        self._tb: Any = None  # its TensorBoard writer, opened at the first record
        if self.run is not None:
            os.makedirs(self.run.path, exist_ok=True)
            if self.lead:
                self.run.mark()
            self._ckpt = self.run.checkpointer(max_to_keep=keep)

    @property
    def checkpoint_dir(self) -> str | None:
        return None if self.run is None else self.run.file(CHECKPOINT_DIR)

    def resume(self, model, opt_state) -> tuple[Any, Any, int, list[dict]]:
        """(model, opt_state, step, history) of the newest intact checkpoint, or as given at 0.

        Damaged newer steps are renamed `<step>.damaged` (kept) with a one-line warning each.
        The history keeps the records up to the restored step; metrics.jsonl is rewritten so.
        """
        if self.run is None:
            return model, opt_state, 0, []
        start = 0
        if self._ckpt.latest_step() is not None:
            model, opt_state, start, _ = self._ckpt.restore(model, opt_state, fallback=True)
            for step, why in self._ckpt.skipped:
                self._set_aside(step, why, start)
        history = self.run.history(upto=start) or []
        if self.multiprocess:  # everyone has read the log before the lead rewrites it
            multihost_utils.sync_global_devices("aecore_history_read")
        if self.lead:
            with open(self.run.file(HISTORY_FILE), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in history)
        return model, opt_state, start, history

    def _set_aside(self, step: int, why: str, start: int) -> None:
        """Renames a damaged step to `<step>.damaged` (kept, no longer listed) and says so."""
        if self.multiprocess:  # every process has skipped it before the lead renames it
            multihost_utils.sync_global_devices(f"aecore_set_aside_{step}")
        path = os.path.join(self._ckpt.directory, str(step))
        aside = f"{path}.damaged"
        n = 1
        while os.path.exists(aside):
            aside, n = f"{path}.damaged.{n}", n + 1
        if self.lead:
            os.rename(path, aside)
            _checks.warn(
                f"checkpoint step {step} in {self._ckpt.directory} is {why}; resuming from "
                f"step {start} (the damaged step is kept as {aside})"
            )
        if self.multiprocess:
            multihost_utils.sync_global_devices(f"aecore_set_aside_done_{step}")

    def record(self, record: dict[str, float]) -> None:
        """Appends one record {"step": t, name: value, ...} to metrics.jsonl and TensorBoard."""
        if self.run is None or not self.lead:
            return
        path = self.run.file(HISTORY_FILE)
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise storage_error(path, e, self.kept()) from e
        if self._tb is None:
            from tensorboardX import SummaryWriter  # lazy: only runs with a workdir write events

            self._tb = SummaryWriter(self.run.file(TB_DIR))
        for k, v in record.items():
            if k != "step":
                self._tb.add_scalar(k, v, record["step"])

    def kept(self) -> str:
        """What a failed write leaves: the newest checkpoint on disk, in words."""
        if self._ckpt is None:
            return "no checkpoint"
        try:
            step = self._ckpt.latest_step()
        except Exception:  # a listing that fails here must not hide the first error
            step = None
        return (
            "no checkpoint" if step is None else f"checkpoint step {step} in {self._ckpt.directory}"
        )

    def save(self, step: int, model, opt_state) -> None:
        """Saves a checkpoint; a write that fails (disk full, ...) raises `StorageError`."""
        if self._ckpt is None:
            return
        try:
            self._ckpt.save(step, model, opt_state, config=self._config)
        except Exception as e:
            if not _is_storage_failure(e):
                raise
            if self.lead:  # the partial step is never used: give its space back
                for name in os.listdir(self._ckpt.directory):
                    if name.startswith(f"{step}.orbax-checkpoint-tmp"):
                        shutil.rmtree(os.path.join(self._ckpt.directory, name), True)
            raise storage_error(
                os.path.join(self._ckpt.directory, str(step)), e, self.kept()
            ) from e

    def abandon(self) -> None:
        """A peer died: closing the checkpointer would wait for it forever, so it is dropped."""
        self._ckpt = None

    def close(self) -> None:
        if self._tb is not None and self.run is not None:  # a writer only exists in a run
            _close_events(self._tb, self.run.file(TB_DIR))
        if self._ckpt is not None:
            self._ckpt.close()


# Errors of the storage (not of aecore): how the OS and tensorstore word them.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_STORAGE_WORDS = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "Input/output error",
)


def _is_storage_failure(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return True
    text = str(e)
    return any(w in text for w in _STORAGE_WORDS) or (
        e.__cause__ is not None and _is_storage_failure(e.__cause__)
    )


def _close_events(writer, path: str) -> None:
    """Closes a TensorBoard writer; events it cannot flush (a full disk) cost a warning, and
    its exit-time cleanup, which would fail again with a traceback, is disarmed."""
    try:
        writer.close()
    except OSError as e:
        for w in getattr(writer, "all_writers", {}).values():
            events = w.event_writer
            if not events._closed:
                with contextlib.suppress(Exception):
                    events._worker.stop()
                events._closed = True
        _checks.warn(f"TensorBoard events in {path} not all written ({e.strerror or e})")


def storage_error(path: str, e: BaseException, kept: str | None = None) -> StorageError:
    """One line: which file could not be written, why, and what is kept."""
    words = [w for w in _STORAGE_WORDS if w in str(e)]
    why = e.strerror if isinstance(e, OSError) and e.strerror else None
    why = why or (words[0] if words else _checks.one_line(e, limit=120))
    tail = f"; kept: {kept}" if kept else ""
    return StorageError(f"could not write {path} ({why}){tail}")

"""Checkpoints of a training run: model and optimizer state as arrays, step and config as JSON.

Written with orbax-checkpoint and restored into freshly built pytrees; nothing is ever unpickled
(arrays are tensorstore/OCDBT chunks, the rest JSON).

What a crash or damage does:
- A step is written to a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renamed
  when complete, so a process killed during a save leaves the previous step as the latest:
  temporary directories are never listed, and `restore` uses the previous complete step.
- Once a step is complete, a digest (BLAKE2b) of every file it stored (the model's arrays, the
  optimizer state's arrays, the metadata) is written beside them, last and atomically, as
  `<step>/DIGEST_FILE`; its metadata records that it has one. Every restore checks the digests
  before reading a value: a file that changed, vanished or appeared, or a missing digest
  file, makes the step damaged (`CheckpointError`), never used.
- A damaged step is never silently skipped either: `restore` raises `CheckpointError` naming
  it and the older step it would use once the damaged one is deleted; only a resume
  (`restore(..., fallback=True)`) falls back to the newest intact step, reporting the skipped
  ones in `skipped`. Steps written before digests existed load with a one-line warning that
  they cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aecore import _checks

_MODEL, _OPT, _META = "model", "opt_state", "meta"
# The digests of a step's files, written into the step's directory once the step is complete.
DIGEST_FILE = "aecore_digest.json"
# Pre-digest steps already reported as unverifiable (one warning per step and process).
_UNVERIFIED_WARNED: set[str] = set()


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read (truncated, corrupted, or not an aecore one)."""

    why: str = ""  # the reason alone, without the step and the advice


def _file_digests(step_dir: str) -> dict[str, str]:
    """BLAKE2b of every file under `step_dir` (relative path -> hex), the digest file aside."""
    out = {}
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel == DIGEST_FILE:
                continue
            h = hashlib.blake2b(digest_size=32)
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[rel] = h.hexdigest()
    return out


def _digest_mismatch(recorded: dict[str, str], found: dict[str, str]) -> str | None:
    """What differs between the recorded and the found digests (one phrase), or None."""
    changed = sorted(k for k in recorded.keys() & found.keys() if recorded[k] != found[k])
    missing = sorted(recorded.keys() - found.keys())
    added = sorted(found.keys() - recorded.keys())
    for what, names in (("changed since it was saved", changed), ("missing", missing)):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            return f"file {names[0]}{more} {what}"
    if added:
        return f"file {added[0]} was added after it was saved"
    return None


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _raw(x):
    """Typed PRNG keys (RNG streams of nnx.Dropout & co.) are stored as their key data."""
    return jax.random.key_data(x) if _is_key(x) else x


def _describe(tree) -> list[dict[str, Any]]:
    """One entry per array of `tree`: its key path, shape and dtype (stored as JSON)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        {"path": jax.tree_util.keystr(p), "shape": list(np.shape(x)), "dtype": str(x.dtype)}
        for p, x in flat
    ]


def _as_dict(tree) -> dict[str, jax.Array]:
    return {_leaf_key(i): _raw(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _shapes(desc: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    return {d["path"]: tuple(d["shape"]) for d in desc}


def _check_compatible(what: str, saved: list[dict[str, Any]], target, directory: str) -> None:
    """Raises ValueError naming both structures when `target` is not shaped like the saved tree."""
    want = _describe(target)
    if [(d["path"], d["shape"], d["dtype"]) for d in saved] == [
        (d["path"], d["shape"], d["dtype"]) for d in want
    ]:
        return
    s, w = _shapes(saved), _shapes(want)
    diffs = [
        f"{p}: checkpoint {s.get(p, 'absent')} vs model {w.get(p, 'absent')}"
        for p in dict.fromkeys([*s, *w])
        if s.get(p) != w.get(p)
    ]
    if not diffs:  # same shapes, different dtypes
        diffs = [
            f"{a['path']}: checkpoint {a['dtype']} vs model {b['dtype']}"
            for a, b in zip(saved, want, strict=True)
            if a["dtype"] != b["dtype"]
        ]
    raise ValueError(
        f"the {what} checkpoint in {directory} does not fit the model being restored "
        f"({len(diffs)} difference(s)): "
        + "; ".join(diffs[:6])
        + ("; ..." if len(diffs) > 6 else "")
    )


class Checkpointer:
    """Saves and restores (model, optimizer state, step, config) under `directory`.

    Keeps the last `max_to_keep` steps. Writes are synchronous: `save` returns once the step is
    on disk and renamed into place, so a crash never leaves a half-written step that `restore`
    would pick.

    Args:
      directory: where steps are stored (one subdirectory per step); created if missing.
      max_to_keep: how many of the most recent steps to keep (>= 1).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int = 3):
        _checks.check_positive_int("max_to_keep", max_to_keep)
        self.directory = os.path.abspath(os.fspath(directory))
        self.skipped: list[tuple[int, str]] = []  # (step, why) a fallback restore passed over
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, model, opt_state, *, config: dict[str, Any] | None = None) -> None:
        """Writes step `step` (overwrites nothing: a step already saved is left as it is).

        Args:
          step: the global step count reached (number of optimizer updates applied).
          model: the model pytree (e.g. an `Autoencoder`).
          opt_state: the optax state (any pytree of arrays), or None.
          config: JSON-serialisable description of the run (restored by `read_meta`).
        """
        if step in self.all_steps():
            return
        meta = {
            "step": int(step),
            "config": config or {},
            "model": _describe(model),
            "opt_state": None if opt_state is None else _describe(opt_state),
            "digest_file": DIGEST_FILE,  # its absence then means damage, not an older step
        }
        items = {
            _MODEL: ocp.args.StandardSave(_as_dict(model)),
            _META: ocp.args.JsonSave(meta),
        }
        if opt_state is not None and jax.tree.leaves(opt_state):  # plain SGD has no state
            items[_OPT] = ocp.args.StandardSave(_as_dict(opt_state))
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:  # all processes' files are in place once orbax returns
            self._write_digests(int(step))

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _write_digests(self, step: int) -> None:
        """Records the digest of every file of `step`, atomically: a temporary file, a rename."""
        path = os.path.join(self._step_dir(step), DIGEST_FILE)
        record = {"algorithm": "blake2b-256", "files": _file_digests(self._step_dir(step))}
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    def verify(self, step: int) -> bool:
        """Checks every file of `step` against its recorded digest before any value is read.

        Returns:
          True when every digest matches; False for a step written before digests existed
          (a one-line warning says it cannot be verified).

        Raises:
          CheckpointError: a file changed, vanished or appeared, or the digest file is missing
            or unreadable for a step that recorded one.
        """
        path = os.path.join(self._step_dir(step), DIGEST_FILE)
        if not os.path.exists(path):
            if self.read_meta(step).get("digest_file"):  # written with one: lost since
                raise self._unreadable(step, f"its {DIGEST_FILE} is missing", damaged=True)
            key = f"{self.directory}:{step}"
            if key not in _UNVERIFIED_WARNED:
                _UNVERIFIED_WARNED.add(key)
                _checks.warn(
                    f"checkpoint step {step} in {self.directory} was written before aecore "
                    "recorded digests: it cannot be verified, and is used as it is"
                )
            return False
        try:
            with open(path) as f:
                recorded = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise self._unreadable(
                step, f"its {DIGEST_FILE} is unreadable: {e}", damaged=True
            ) from e
        mismatch = _digest_mismatch(recorded, _file_digests(self._step_dir(step)))
        if mismatch:
            raise self._unreadable(step, mismatch, damaged=True)
        return True

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record of a step (latest if None): step, config, and array descriptions."""
        step = self._step(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out[_META]
        except Exception as e:  # orbax raises many types for damaged files
            raise self._unreadable(step, _checks.one_line(e, limit=240)) from e
        if not isinstance(meta, dict) or not {"step", "model"} <= set(meta):
            raise self._unreadable(step, "no aecore metadata")
        if meta["step"] != step:
            raise self._unreadable(step, f"its metadata records step {meta['step']!r}")
        return meta

    def restore(self, model, opt_state=None, *, step: int | None = None, fallback: bool = False):
        """Restores a step (latest if None) into pytrees shaped like `model` and `opt_state`.

        Every file of the step is checked against its digest first (`verify`).

        Args:
          model: a freshly built model of the same configuration; its structure, shapes and
            dtypes are the template (its values are ignored).
          opt_state: template optimizer state, or None to restore the model only.
          step: which step; None for the latest.
          fallback: with `step=None`, restore the newest intact step when newer ones are
            damaged (what a resume does); the skipped steps and why are left in `skipped`.

        Returns:
          (model, opt_state or None, step, config dict).

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          ValueError: the checkpoint holds arrays of other shapes (names both).
          CheckpointError: the checkpoint is damaged (with `fallback`: every step is).
        """
        self.skipped = []
        if not fallback or step is not None:
            return self._restore(model, opt_state, self._step(step))
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for s in reversed(steps):
            try:
                return self._restore(model, opt_state, s)
            except CheckpointError as e:
                self.skipped.append((s, e.why))
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}: "
            + "; ".join(f"step {s}: {why}" for s, why in self.skipped)
            + f"; move {self.directory} away to start over"
        )

    def _restore(self, model, opt_state, step: int):
        self.verify(step)
        meta = self.read_meta(step)
        _check_compatible("model", meta["model"], model, self.directory)
        items = {_MODEL: ocp.args.StandardRestore(_abstract(model))}
        if opt_state is not None:
            if meta.get("opt_state") is None:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} holds no optimizer state"
                )
            _check_compatible("optimizer-state", meta["opt_state"], opt_state, self.directory)
            if jax.tree.leaves(opt_state):
                items[_OPT] = ocp.args.StandardRestore(_abstract(opt_state))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise self._unreadable(step, _checks.one_line(e, limit=240)) from e
        new_model = _fill(model, out[_MODEL])
        new_opt = opt_state if _OPT not in items else _fill(opt_state, out[_OPT])
        return new_model, new_opt, int(meta["step"]), meta.get("config", {})

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unreadable(self, step: int, why: str, *, damaged: bool = False) -> CheckpointError:
        older = [s for s in self.all_steps() if s < step]
        path = self._step_dir(step)
        then = f"to resume from step {older[-1]}" if older else "to start over"
        state = "damaged" if damaged else "unreadable"
        error = CheckpointError(
            f"checkpoint step {step} in {self.directory} is {state} ({why}); delete {path} {then}"
        )
        error.why = f"{state} ({why})"
        return error

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; saved: {self.all_steps()}"
            )
        return step


def _abstract(tree) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        k: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
        for k, x in _as_dict(tree).items()
    }


def _cook(template_leaf, array):
    if _is_key(template_leaf):
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(template_leaf))
    return array


def _fill(template, arrays: dict[str, jax.Array]):
    """`template`'s structure with the restored arrays in leaf order."""
    leaves, treedef = jax.tree.flatten(template)
    return jax.tree.unflatten(
        treedef, [_cook(leaf, arrays[_leaf_key(i)]) for i, leaf in enumerate(leaves)]
    )


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The newest complete checkpoint step under `directory`, or None (also when it is absent)."""
    if not os.path.isdir(directory):
        return None
    with Checkpointer(directory) as ckpt:
        return ckpt.latest_step()


def restore_checkpoint(
    directory: str | os.PathLike[str], model, opt_state=None, *, step: int | None = None
):
    """One-shot `Checkpointer(directory).restore(...)`: (model, opt_state, step, config)."""
    with Checkpointer(directory) as ckpt:
        return ckpt.restore(model, opt_state, step=step)


def read_config(directory: str | os.PathLike[str], *, step: int | None = None) -> dict[str, Any]:
    """The config stored with a checkpoint (latest if `step` is None)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    with Checkpointer(directory) as ckpt:
        return ckpt.read_meta(step).get("config", {})

"""The run directory: the one place that names a run's files, and the one reader and writer of
its metric history (metrics.jsonl), checkpoints and TensorBoard events while training.

WORKDIR/
  config.json      the run's config (`aecore.run`), stored once
  data.json        the training data's shape, value range and sha256
  checkpoints/     model and optimizer state (`aecore.checkpoint`)
  metrics.jsonl    one record per logged step (`fit`)
  tb/              TensorBoard scalars of the same records
  metrics.json     the evaluated run (`aecore.run`), then the figures' paths
  <figure>.png     the figures that fit the data
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
from jax.experimental import multihost_utils

from aecore.checkpoint import Checkpointer

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
    CONFIG_FILE,
    METRICS_FILE,
    DATA_FILE,
    HISTORY_FILE,
    CHECKPOINT_DIR,
    TB_DIR,
    *(f"{name}.png" for name in FIGURES),
)


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
        """The JSON object in file `name`, or None when the file does not exist."""
        path = self.file(name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        """Writes `value` to file `name` atomically (a temporary file, then a rename)."""
        path = self.file(name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    def history(self, upto: int | None = None) -> list[dict] | None:
        """The records of metrics.jsonl (those up to step `upto` if given), or None without one.

        Records after `upto` belong to a part of a run that was lost (not checkpointed).
        """
        path = self.file(HISTORY_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        return records if upto is None else [r for r in records if r.get("step", 0) <= upto]

    def checkpointer(self, *, max_to_keep: int = 3) -> Checkpointer:
        return Checkpointer(self.file(CHECKPOINT_DIR), max_to_keep=max_to_keep)

    def has_checkpoint_dir(self) -> bool:
        return os.path.isdir(self.file(CHECKPOINT_DIR))

    def remove_run(self) -> list[str]:
        """Deletes the files of a run (`RUN_FILES`); other files stay. Returns those deleted."""
        removed = []
        for name in RUN_FILES:
            path = self.file(name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
            else:
                continue
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
            self._ckpt = self.run.checkpointer(max_to_keep=keep)

    @property
    def checkpoint_dir(self) -> str | None:
        return None if self.run is None else self.run.file(CHECKPOINT_DIR)

    def resume(self, model, opt_state) -> tuple[Any, Any, int, list[dict]]:
        """(model, opt_state, step, history) of the latest checkpoint, or as given at step 0.

        The history keeps the records up to the restored step; metrics.jsonl is rewritten so.
        """
        if self.run is None:
            return model, opt_state, 0, []
        start = 0
        if self._ckpt.latest_step() is not None:
            model, opt_state, start, _ = self._ckpt.restore(model, opt_state)
        history = self.run.history(upto=start) or []
        if self.multiprocess:  # everyone has read the log before the lead rewrites it
            multihost_utils.sync_global_devices("aecore_history_read")
        if self.lead:
            with open(self.run.file(HISTORY_FILE), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in history)
        return model, opt_state, start, history

    def record(self, record: dict[str, float]) -> None:
        """Appends one record {"step": t, name: value, ...} to metrics.jsonl and TensorBoard."""
        if self.run is None or not self.lead:
            return
        with open(self.run.file(HISTORY_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None:
            from tensorboardX import SummaryWriter  # lazy: only runs with a workdir write events

            self._tb = SummaryWriter(self.run.file(TB_DIR))
        for k, v in record.items():
            if k != "step":
                self._tb.add_scalar(k, v, record["step"])

    def save(self, step: int, model, opt_state) -> None:
        if self._ckpt is not None:
            self._ckpt.save(step, model, opt_state, config=self._config)

    def abandon(self) -> None:
        """A peer died: closing the checkpointer would wait for it forever, so it is dropped."""
        self._ckpt = None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._ckpt is not None:
            self._ckpt.close()

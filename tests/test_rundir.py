"""The run directory (aecore.train.rundir) and the frozen RunConfig a config becomes."""

import json
import os

import pytest

from aecore import Objective, configs, regularizers
from aecore.run import RunConfig
from aecore.train import rundir
from aecore.train.rundir import RunDir


def test_history_keeps_the_records_up_to_a_step_and_is_none_without_a_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.history() is None
    with open(run.file(rundir.HISTORY_FILE), "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (5, 10, 15))
    assert [r["step"] for r in run.history()] == [5, 10, 15]
    assert [r["step"] for r in run.history(upto=10)] == [5, 10]


def test_write_json_reads_back_and_leaves_no_temporary_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_json(rundir.METRICS_FILE) is None
    run.write_json(rundir.METRICS_FILE, {"b": 2, "a": [1.5]})
    assert run.read_json(rundir.METRICS_FILE) == {"a": [1.5], "b": 2}
    assert os.listdir(tmp_path) == [rundir.METRICS_FILE]


def test_remove_run_deletes_the_run_files_only(tmp_path):
    run = RunDir(tmp_path)
    os.makedirs(run.file(rundir.CHECKPOINT_DIR) + "/3")
    for name in (rundir.CONFIG_FILE, rundir.HISTORY_FILE, "notes.txt"):
        open(run.file(name), "w").close()
    open(run.figure("filters"), "w").close()
    removed = run.remove_run()
    assert set(removed) == {
        rundir.CONFIG_FILE, rundir.HISTORY_FILE, rundir.CHECKPOINT_DIR, "filters.png"
    }  # fmt: skip
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_run_config_round_trips_through_its_json_form():
    config = configs.get_config("contractive", quick=True)
    run_config = RunConfig.of(config)
    assert RunConfig.of(run_config) is run_config
    stored = json.loads(json.dumps(run_config.to_dict()))  # as config.json holds it
    assert stored == json.loads(json.dumps(config.to_dict()))  # what was stored before
    assert RunConfig.of(stored) == run_config
    with pytest.raises(ValueError, match="unknown config section"):
        RunConfig.of({**stored, "optimizer": {}})


def test_a_run_config_with_user_terms_is_not_stored_without_them():
    term = regularizers.Term("mine", lambda m, x, xt, h, k: x.sum())
    run_config = RunConfig(objective=Objective(extra_terms=[term]))
    with pytest.raises(ValueError, match="extra_terms"):
        run_config.to_dict()

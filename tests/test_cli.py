"""End-to-end tests of the experiment configs, `train_and_evaluate` and the `aecore` command."""

import json
import os

import ml_collections
import numpy as np
import pytest

from experiments import configs
from experiments.main import apply_overrides, main
from experiments.train import train_and_evaluate

METRIC_KEYS = {
    "reconstruction_error",
    "mean_jacobian_norm",
    "saturation",
    "linear_probe_accuracy",
    "wall_time_s",
    "steps",
}


@pytest.mark.parametrize("name", configs.CONFIGS)
def test_every_quick_config_trains_and_writes_its_outputs(name, tmp_path):
    config = configs.get_config(name, quick=True)
    config.train.num_steps = 6  # compilation dominates; a few steps show the pipeline works
    metrics = train_and_evaluate(config, tmp_path)
    assert METRIC_KEYS <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in METRIC_KEYS)
    with open(tmp_path / "metrics.json") as f:
        assert METRIC_KEYS <= set(json.load(f))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["num_steps"] == 6
    for png in ("reconstructions.png", "filters.png", "loss_curves.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_configs_are_locked_and_documented():
    for name in configs.CONFIGS:
        full, quick = configs.get_config(name), configs.get_config(name, quick=True)
        assert set(full.keys()) == {"data", "model", "objective", "train"}
        assert quick.train.num_steps < full.train.num_steps
        with pytest.raises(AttributeError):
            full.train.no_such_field = 1
        doc = __import__(f"experiments.configs.{name}", fromlist=["_"]).__doc__
        assert f"aecore train {name}" in doc and "Expected" in doc and "Runtime:" in doc


def test_unknown_config_lists_the_valid_names():
    with pytest.raises(ValueError, match="valid: undercomplete, linear"):
        configs.get_config("nope")


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["encode"]])
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: aecore" in capsys.readouterr().out


def test_overrides_are_cast_to_the_field_type():
    c = configs.get_config("contractive")
    apply_overrides(
        c,
        [
            "train.num_steps=100",
            "objective.contractive=0.5",
            "train.learning_rate=1e-2",
            "model.tied=true",
            "model.hidden=128,64",
            "data.max_examples=50",
            "data.name=circle",
            "objective.chunk_size=none",
        ],
    )
    assert c.train.num_steps == 100 and isinstance(c.train.num_steps, int)
    assert c.objective.contractive == 0.5 and c.train.learning_rate == 0.01
    assert c.model.tied is True and c.model.hidden == (128, 64)
    assert c.data.max_examples == 50 and c.data.name == "circle"
    assert c.objective.chunk_size is None


def test_override_errors_name_the_problem():
    c = configs.get_config("contractive")
    with pytest.raises(ValueError, match=r"unknown config key 'train.nm_steps'; valid keys: .*"):
        apply_overrides(c, ["train.nm_steps=3"])
    with pytest.raises(ValueError, match="train.num_steps='many': cannot read as int"):
        apply_overrides(c, ["train.num_steps=many"])
    with pytest.raises(ValueError, match="cannot read as bool"):
        apply_overrides(c, ["model.tied=maybe"])


def test_cli_unknown_key_exits_with_the_valid_keys(capsys):
    with pytest.raises(ValueError, match="valid keys: data.data_dir, data.max_examples"):
        main(["train", "tied", "--quick", "--config.train.bogus=1"])


def test_cli_train_evaluate_encode(tmp_path, capsys):
    wd = str(tmp_path / "run")
    metrics = main(["train", "tied", "--quick", "--workdir", wd, "--config.train.num_steps", "4"])
    out = capsys.readouterr().out
    assert metrics["steps"] == 4 and "metrics and figures in" in out
    again = main(["evaluate", wd])
    assert again["steps"] == 4
    assert np.isclose(again["reconstruction_error"], metrics["reconstruction_error"], rtol=1e-5)
    x = np.random.default_rng(0).uniform(0, 1, (7, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    codes = main(
        ["encode", wd, "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy")]
    )
    assert np.load(tmp_path / "z.npy").shape == codes.shape == (7, 64)


def test_cross_entropy_on_real_valued_data_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 64)).astype(np.float32)
    np.save(tmp_path / "real.npy", x)
    c = configs.get_config("undercomplete", quick=True)
    with pytest.raises(ValueError, match=r"cross-entropy loss needs data in \[0, 1\]"):
        main(
            [
                "train",
                "undercomplete",
                "--quick",
                "--workdir",
                str(tmp_path / "wd"),
                "--data",
                str(tmp_path / "real.npy"),
            ]
        )
    assert isinstance(c, ml_collections.ConfigDict)


def test_default_workdir_is_runs_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["train", "linear", "--quick", "--config.train.num_steps=2"])
    assert os.path.exists(tmp_path / "runs" / "linear" / "metrics.json")

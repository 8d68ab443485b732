"""End-to-end tests of the experiment configs, `train_and_evaluate` and the `aecore` command."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from aecore import configs
from aecore.cli import main
from aecore.models import ModelSpec, make_autoencoder
from aecore.run import build_model, train_and_evaluate

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
        doc = configs.doc(name)
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
    c = configs.override(
        configs.get_config("contractive"),
        [
            "train.num_steps=100",
            "objective.contractive=0.5",
            "train.learning_rate=1e-2",
            "model.tied=true",
            "model.hidden=128,64",
            "data.max_examples=50",
            "data.name=circle",
            "objective.chunk_size=none",
            "--config.objective.contractive_probes=1",
            "model.conv_channels=(8, 4)",
            "model.decoder_hidden=16",
        ],
    )
    assert c.train.num_steps == 100 and isinstance(c.train.num_steps, int)
    assert c.objective.contractive == 0.5 and c.train.learning_rate == 0.01
    assert c.model.tied is True and c.model.hidden == (128, 64)
    assert c.data.max_examples == 50 and c.data.name == "circle"
    assert c.objective.chunk_size is None and c.objective.contractive_probes == 1
    assert c.model.conv_channels == (8, 4) and c.model.decoder_hidden == (16,)


def _example(t: type, nullable: bool, current):
    """A value of config type `t` that differs from `current`, and how to write it."""
    if nullable and current is not None:
        return None, "none"
    if t is bool:
        return not current, str(not current).lower()
    if t is int:
        return (current or 0) + 3, str((current or 0) + 3)
    if t is float:
        return (current or 0.0) + 0.25, str((current or 0.0) + 0.25)
    if t is tuple:
        return (5, 7), "5,7"
    return "something_else", "something_else"


def test_every_dataclass_field_is_a_config_key_settable_from_the_command_line():
    base = configs.get_config("undercomplete")
    keys = configs.schema()
    for section, cls in configs.SECTIONS.items():
        assert set(base[section].keys()) == {
            f.name
            for f in dataclasses.fields(cls)
            if f"{section}.{f.name}" not in configs.NOT_CONFIGURABLE
        }
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            if key in configs.NOT_CONFIGURABLE:
                continue
            t, nullable = keys[key]
            want, text = _example(t, nullable, base[section][f.name])
            got = configs.override(base, [f"--config.{key}={text}"])[section][f.name]
            assert got == want, key
    # Each config key reaches its dataclass: the sections build the library objects as is.
    run_cfg = base.to_dict()
    for section, cls in configs.SECTIONS.items():
        assert dataclasses.asdict(cls(**run_cfg[section])).keys() >= set(run_cfg[section])


def test_model_spec_covers_every_make_autoencoder_argument():
    import inspect

    params = set(inspect.signature(make_autoencoder).parameters) - {"input_shape", "key"}
    assert {f.name for f in dataclasses.fields(ModelSpec)} == params
    cfg = configs.override(
        configs.get_config("undercomplete"),
        ["model.hidden=12,6", "model.decoder_hidden=9", "model.dtype=float16"],
    ).to_dict()
    model = build_model(cfg, (8, 8, 1))
    assert model.encoder.layers[1].kernel[...].shape == (12, 6)
    assert model.decoder.layers[0].kernel[...].shape == (6, 9)
    assert model.encoder.layers[0].kernel[...].dtype == np.float16
    conv = ModelSpec(hidden=(5,), architecture="conv", conv_channels=(3,), output="identity")
    enc = conv.build((8, 8, 1), key=0).encoder  # shapes only: an eager conv pass is slow
    assert [c.kernel[...].shape[-1] for c in enc.convs] == [3]
    assert enc.code.kernel[...].shape[-1] == 5


def test_override_errors_name_the_problem():
    c = configs.get_config("contractive")
    with pytest.raises(ValueError, match=r"unknown config key 'train.nm_steps'; valid keys: .*"):
        configs.override(c, ["train.nm_steps=3"])
    with pytest.raises(ValueError, match="train.num_steps=many: invalid literal for int"):
        configs.override(c, ["train.num_steps=many"])
    with pytest.raises(ValueError, match="Non-boolean argument"):
        configs.override(c, ["model.tied=maybe"])
    with pytest.raises(ValueError, match=r"model.hidden: \('a',\) is not a tuple of int"):
        configs.override(c, ["model.hidden=a"])


def test_cli_unknown_key_exits_with_the_valid_keys(capsys):
    with pytest.raises(ValueError, match="valid keys: data.data_dir, data.max_examples"):
        main(["train", "tied", "--quick", "--config.train.bogus=1"])


def test_config_command_prints_the_docstring_and_every_key(capsys):
    text = main(["config", "contractive"])
    assert text.startswith(configs.doc("contractive"))
    for key in configs.schema():
        assert f"\n{key} = " in text, key
    assert "objective.contractive = 0.1" in text
    assert "train.num_steps = 20" in main(["config", "contractive", "--quick"])


def test_train_help_says_what_each_config_trains_and_reaches(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in configs.CONFIGS:
        assert f"{name}: " in out
    assert "Expected (digits, seed 0): test cross-entropy ≈ 14.7" in out  # contractive's


def test_importing_aecore_loads_no_config_or_plotting_library():
    code = (
        "import sys, aecore; bad = [m for m in ('ml_collections', 'matplotlib', 'aecore.cli', "
        "'aecore.configs', 'aecore.run') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert importlib.util.find_spec("aecore.cli") is not None


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


def test_default_workdir_is_runs_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["train", "linear", "--quick", "--config.train.num_steps=2"])
    assert os.path.exists(tmp_path / "runs" / "linear" / "metrics.json")


def test_train_model_is_the_spec_built_from_the_seed_then_fit():
    from aecore.objective import Objective
    from aecore.run import train_model
    from aecore.train import TrainConfig, fit

    x = np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32)
    config = TrainConfig(num_steps=3, batch_size=8, seed=5, progress=False)
    spec = ModelSpec(hidden=(4,), output="identity")
    objective = Objective(contractive=0.1)
    got = train_model(spec, objective, x, config=config).model
    want = fit(make_autoencoder((6,), hidden=(4,), output="identity", key=5), objective, x,
               config=config).model  # fmt: skip
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)

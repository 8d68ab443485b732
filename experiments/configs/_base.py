"""The defaults every experiment config starts from; each variant file changes a few fields."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config(*, quick: bool = False) -> ml_collections.ConfigDict:
    """An unlocked config with every section and field; the variant edits then locks it.

    Sections mirror the plain arguments of aecore: `data` (`aecore.data.load_dataset` and
    `normalize`), `model` (`aecore.models.make_autoencoder`), `objective`
    (`aecore.objective.Objective`) and `train` (`aecore.train.TrainConfig`).
    """
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(
        {
            "name": "digits",
            "normalization": "none",
            "data_dir": config_dict.placeholder(str),
            "max_examples": config_dict.placeholder(int),
            "test_fraction": 0.2,
            "seed": 0,
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "hidden": (32,),
            "activation": "sigmoid",
            "output": "sigmoid",
            "tied": False,
            "architecture": "mlp",
        }
    )
    c.objective = ml_collections.ConfigDict(
        {
            "loss": "cross_entropy",
            "weight_decay": 0.0,
            "l1": 0.0,
            "kl": 0.0,
            "rho": 0.05,
            "contractive": 0.0,
            "jacobian_mode": "auto",
            "chunk_size": config_dict.placeholder(int),
            "higher_order": 0.0,
            "higher_order_sigma": 0.1,
            "higher_order_samples": 4,
            "corruption": "none",
            "corruption_level": 0.0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 3000,
            "batch_size": 64,
            "learning_rate": 3e-3,
            "lr_schedule": "constant",
            "optimizer": "adam",
            "seed": 0,
            "log_every": 100,
            "eval_every": 500,
            "checkpoint_every": 1000,
            "keep_checkpoints": 3,
            "data_parallel": False,
            "progress": True,
        }
    )
    if quick:
        shrink(c)
    return c


def shrink(c: ml_collections.ConfigDict) -> None:
    """The quick variant: a few steps on a few hundred examples (seconds; used by the tests)."""
    c.data.max_examples = 200
    c.train.num_steps = 20
    if c.train.batch_size is not None:  # a full-batch config stays full batch
        c.train.batch_size = 32
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.train.progress = False


def finish(c: ml_collections.ConfigDict, *, quick: bool) -> ml_collections.ConfigDict:
    """Applies the quick variant if asked and locks the config (no new keys, types checked)."""
    if quick:
        shrink(c)
    c.lock()
    return c

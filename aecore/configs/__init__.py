"""Experiment configs, one file per variant; `get_config(name)` picks one by name.

Each config has the sections of `SECTIONS`, the fields of `aecore.run.RunConfig` (the dataclasses
`aecore.data.DataConfig`, `aecore.models.ModelSpec`, `aecore.objective.Objective`,
`aecore.train.TrainConfig`); its module docstring gives the command, the expected result and the
runtime.
"""

from __future__ import annotations

import importlib

import ml_collections

from aecore.configs._base import (
    EXPERIMENT_DEFAULTS,
    NOT_CONFIGURABLE,
    SECTIONS,
    base_config,
    finish,
    override,
    schema,
)

CONFIGS: tuple[str, ...] = (
    "undercomplete",
    "linear",
    "overcomplete",
    "weight_decay",
    "tied",
    "sparse_l1",
    "sparse_kl",
    "denoising_mask",
    "denoising_gaussian",
    "contractive",
    "contractive_higher_order",
    "reconstruction_contractive",
    "isometric",
)

__all__ = [
    "CONFIGS",
    "EXPERIMENT_DEFAULTS",
    "NOT_CONFIGURABLE",
    "SECTIONS",
    "base_config",
    "describe",
    "doc",
    "finish",
    "get_config",
    "override",
    "schema",
    "summary",
]


def _check(name: str) -> None:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; valid: {', '.join(CONFIGS)}")


def get_config(name: str, quick: bool = False) -> ml_collections.ConfigDict:
    """The locked config of experiment `name` (one of `CONFIGS`); `quick` shrinks it to seconds."""
    _check(name)
    return importlib.import_module(f"aecore.configs.{name}").get_config(quick=quick)


def doc(name: str) -> str:
    """The docstring of config `name`: what it trains, the command, what it reaches, runtime."""
    _check(name)
    return (importlib.import_module(f"aecore.configs.{name}").__doc__ or "").strip()


def summary(name: str) -> str:
    """One paragraph for `aecore train --help`: what config `name` trains and should reach."""
    paragraphs = doc(name).split("\n\n")
    what = " ".join(paragraphs[0].split())
    rest = " ".join(" ".join(paragraphs[1:]).split())
    expected = rest.partition("Expected")[2].partition("Runtime:")[0].strip(" :")
    return f"{what} Expected {expected}" if expected else what


def describe(config: ml_collections.ConfigDict) -> str:
    """`section.key = value` lines, one per field: what `--config.section.key=` sets."""
    lines = []
    for section in config:
        for key in config[section]:
            lines.append(f"{section}.{key} = {config[section][key]!r}")
    return "\n".join(lines)

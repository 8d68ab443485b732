"""Experiment configs, one file per variant; `get_config(name)` picks one by name."""

from __future__ import annotations

import importlib

import ml_collections

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
)


def get_config(name: str, quick: bool = False) -> ml_collections.ConfigDict:
    """The locked config of experiment `name` (one of `CONFIGS`); `quick` shrinks it to seconds."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; valid: {', '.join(CONFIGS)}")
    return importlib.import_module(f"experiments.configs.{name}").get_config(quick=quick)

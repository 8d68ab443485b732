"""The config schema, derived from the library's dataclasses, and the defaults every experiment
config starts from; each variant file changes a few fields.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from aecore.run import RunConfig

# A config section per field of `RunConfig`, each a dataclass: every field of these is a config
# key of the same name, with the dataclass default unless `EXPERIMENT_DEFAULTS` says otherwise.
# Nothing is listed twice.
SECTIONS: dict[str, type] = {
    f.name: typing.cast(type, f.default_factory) for f in dataclasses.fields(RunConfig)
}
# Fields that hold code rather than values: they are set in Python, never from a config.
NOT_CONFIGURABLE: dict[str, str] = {
    "objective.extra_terms": "user terms are code; pass Objective(extra_terms=...) in Python",
}
# Where the experiment configs start from when it differs from the library default: the digits
# (values in [0, 1]) with a sigmoid decoder and cross-entropy, a 32-unit code, a few thousand
# steps with evaluations and checkpoints along the way.
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "model.hidden": (32,),
    "objective.loss": "cross_entropy",
    "train.num_steps": 3000,
    "train.learning_rate": 3e-3,
    "train.log_every": 100,
    "train.eval_every": 500,
    "train.checkpoint_every": 1000,
}
_SCALARS = (bool, int, float, str, tuple)


def _hint(cls: type, name: str):
    return typing.get_type_hints(cls)[name]


def _element_type(cls: type, name: str) -> type | None:
    """The element type of a `tuple[T, ...]` field (None when the field has no such form)."""
    hint = _hint(cls, name)
    for a in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if typing.get_origin(a) is tuple:
            return typing.get_args(a)[0]
    return None


def _field_type(cls: type, field: dataclasses.Field) -> tuple[type, bool]:
    """(the config type of a dataclass field, whether it may be None)."""
    hint = _hint(cls, field.name)
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    options = [typing.get_origin(a) or a for a in args if a is not type(None)]
    default = field.default
    t = type(default) if default is not None else options[0]
    if t not in _SCALARS:
        raise TypeError(
            f"{cls.__name__}.{field.name} has type {hint}, which a config cannot hold; give it "
            "a bool/int/float/str/tuple type or list it in aecore.configs.NOT_CONFIGURABLE"
        )
    return t, nullable


def schema() -> dict[str, tuple[type, bool]]:
    """Every config key `section.field` -> (its type, whether None is allowed)."""
    keys = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f"{section}.{f.name}" not in NOT_CONFIGURABLE:
                keys[f"{section}.{f.name}"] = _field_type(cls, f)
    return keys


def base_config(defaults: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """An unlocked config: each `SECTIONS` dataclass's fields with its default, except for the
    keys of `defaults` (`EXPERIMENT_DEFAULTS` when None; `{}` for the library's own defaults)."""
    defaults = EXPERIMENT_DEFAULTS if defaults is None else defaults
    c = ml_collections.ConfigDict()
    fields = {f"{s}.{f.name}": f for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for key, (t, _) in schema().items():
        section, name = key.split(".")
        if section not in c:
            c[section] = ml_collections.ConfigDict()
        value = defaults.get(key, fields[key].default)
        c[section][name] = config_dict.placeholder(t) if value is None else value
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


_NONE = ("none", "null")


def override(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """`config` with `KEY=VALUE` overrides applied by `ml_collections.config_flags`.

    KEY is dotted (`train.num_steps`, an optional `--config.` prefix is dropped); each value is
    parsed as the type of the field it replaces (bools true/false, tuples `128,64` or `(128,
    64)`), and `none` clears a field whose dataclass allows None (e.g. `train.batch_size=none`,
    the full batch).

    Raises:
      ValueError: one line naming an unknown key (with the valid keys) or an unparsable value.
    """
    from absl import flags
    from ml_collections import config_flags

    keys = schema()
    argv, nulls = [], []
    for item in overrides:
        body = item.removeprefix("--config.")
        key, sep, text = body.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must read KEY=VALUE, e.g. train.num_steps=100")
        if key not in keys:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(keys))}")
        if text.strip().lower() in _NONE and keys[key][1]:
            nulls.append(key)
        else:
            argv.append(f"--config.{key}={text}")
    config = copy.deepcopy(config)
    if argv:
        fv = flags.FlagValues()
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=fv, lock_config=False, sys_argv=["aecore", *argv]
        )
        try:
            fv(["aecore", *argv])
        except flags.Error as e:
            raise ValueError(" ".join(str(e).split())) from None
        config = fv.config
    for item in argv:
        key = item.removeprefix("--config.").partition("=")[0]
        section, name = key.split(".")
        elem = _element_type(SECTIONS[section], name)
        value = config[section][name]
        if (
            isinstance(value, tuple)
            and elem is not None
            and not all(
                isinstance(v, elem) and not (elem is int and isinstance(v, bool)) for v in value
            )
        ):
            raise ValueError(
                f"--config.{key}: {value!r} is not a tuple of {elem.__name__}, e.g. "
                f"--config.{key}={','.join(map(str, [elem(1)] * 2))}"
            )
    for key in nulls:
        section, name = key.split(".")
        with config.unlocked():
            config[section][name] = None
    config.lock()
    return config

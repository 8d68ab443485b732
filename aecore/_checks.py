"""Input validation shared by every public function of aecore.

Each check raises ValueError naming the bad value and the allowed range, never `assert`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer under jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def _as_float(name: str, value) -> float:
    if not is_concrete(value):
        return math.nan  # traced hyperparameter: checked by the caller outside jit
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def check_nonnegative(name: str, value) -> None:
    v = _as_float(name, value)
    if math.isnan(v) and is_concrete(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if v < 0 or math.isinf(v):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_open_unit(name: str, value) -> None:
    v = _as_float(name, value)
    if is_concrete(value) and not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}")


def check_half_open_unit(name: str, value) -> None:
    v = _as_float(name, value)
    if is_concrete(value) and not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_int(name: str, value, *, low: int = 0, high: int | None = None) -> None:
    """Raises unless `value` is an integer (not a bool) in [low, high] (no upper bound if None)."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def check_choice(name: str, value, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, allowed))}")


def check_finite(name: str, x) -> None:
    """Raises if a concrete array holds NaN or inf (says how many and where the first is)."""
    if not is_concrete(x):
        return
    a = np.asarray(x)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf); "
            f"first at index {first}: {a[first]!r}"
        )


def check_unit_interval(name: str, x) -> None:
    """Raises if a concrete array has values outside [0, 1] (cross-entropy targets)."""
    if not is_concrete(x):
        return
    a = np.asarray(x)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] for the cross-entropy loss, "
            f"got values in [{lo:g}, {hi:g}]; use the squared-error loss with a linear decoder "
            "for real-valued data, or rescale"
        )


def one_line(e: BaseException | str, *, limit: int | None = None) -> str:
    """A message or an exception as one line (whitespace collapsed), the one formatter of aecore.

    With `limit` (how a wrapping error names its cause): `Type: first line`, cut after `limit`
    characters and without the tensorstore spec that orbax appends.
    """
    if isinstance(e, str):
        return " ".join(e.split())
    if limit is None:
        return " ".join(str(e).split()) or type(e).__name__
    text = " ".join(str(e).strip().split("\n")[0].split()).split(" [tensorstore_spec")[0]
    text = _BOUND_METHOD.sub("", text).strip(" :")  # e.g. `<bound method pybind11_object...>`
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


# tensorstore's errors end their first line with a pybind11 method's repr, closed or not.
_BOUND_METHOD = re.compile(r"(See full TensorStore details: )?<bound method (?:[^<>]|<[^<>]*>)*>?")


def warn(message: str) -> None:
    """A one-line warning on stderr (`warnings.warn` would add a file and a source line)."""
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)

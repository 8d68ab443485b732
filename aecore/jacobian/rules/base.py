"""The interface every primitive rule gives: does it apply, its linear part, row norms,
multiply-adds and its name in `explain`. One subclass per primitive family, one module each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aecore.jacobian.trace import Op


def size(shape: Sequence[int]) -> int:
    return int(np.prod(shape))


def dims(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape if s != 1) or "1"


class Rule:
    """Defaults for a primitive that is affine in its one x-dependent operand `op.dep[0]`.

    `vals` below are the operands of one equation, the x-dependent one at `op.dep[0]`.
    """

    primitives: frozenset[str] = frozenset()

    def linear(self, op: Op) -> bool:
        """Is the equation an affine map of its x-dependent operand?"""
        return True

    def isometric(self, op: Op) -> bool:
        """Does its linear part only move entries (so it keeps ‖·‖_F)?"""
        return False

    def linear_part(self, op: Op, vals: list) -> Any:
        """The output of the equation's linear part A(v) = op(v) − op(0) at vals[op.dep[0]]."""
        return op.bind(vals)[0]

    def row_norms(self, op: Op, vals: list, disjoint: bool) -> tuple[Any, bool] | None:
        """(squared row norms after the equation, disjoint) from those of its input at
        vals[op.dep[0]] while the rows have disjoint supports (`disjoint`); None if unknown."""
        return None

    def pull(self, op: Op, vals: list, rows: Any) -> Any:
        """rows · A for rows [R, *out] of the equation's linear part, [R, *in]; None: the
        caller pulls them back by autodiff (a rule gives this only where it is faster)."""
        return None

    def macs(self, op: Op) -> int:
        """Multiply-adds of one application (default: one per output entry)."""
        return size(getattr(op.eqn.outvars[0].aval, "shape", ()))

    def label(self, op: Op) -> str | None:
        """How `explain` names the equation inside a linear block (None: not named)."""
        return None

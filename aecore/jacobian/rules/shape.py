"""Shape ops: linear maps that move, select, pad, sum or broadcast entries (no parameters)."""

from __future__ import annotations

import jax.numpy as jnp

from aecore.jacobian.rules.base import Rule, size

# Maps that only move entries: they keep ‖·‖_F, so a trailing one can be dropped.
ISOMETRIC = frozenset(
    "reshape transpose squeeze expand_dims rev copy copy_p convert_element_type".split()
)


class Shape(Rule):
    primitives = ISOMETRIC | {"broadcast_in_dim", "slice", "pad", "concatenate", "reduce_sum"}

    def linear(self, op) -> bool:
        if op.name == "pad":
            return op.dep[0] == 0  # the padding value is an offset, not x's map
        if op.name == "convert_element_type":
            return jnp.issubdtype(op.eqn.outvars[0].aval.dtype, jnp.floating)
        return True

    def isometric(self, op) -> bool:
        return op.name in ISOMETRIC

    def linear_part(self, op, vals):
        return op.bind(self._offsets_zeroed(op, vals))[0]

    def _offsets_zeroed(self, op, vals):
        if op.name == "pad":
            return [vals[0], jnp.zeros((), vals[0].dtype)]
        if op.name == "concatenate":  # concatenated constants are offsets
            return [v if i == op.dep[0] else jnp.zeros_like(v) for i, v in enumerate(vals)]
        return vals

    def row_norms(self, op, vals, disjoint):
        if op.name == "reduce_sum" and not disjoint:
            return None
        new = op.bind(self._offsets_zeroed(op, vals))[0]
        if op.name == "reduce_sum":
            return new, False
        if op.name == "broadcast_in_dim":  # a copy of a row overlaps the row itself
            return new, disjoint and new.size == vals[op.dep[0]].size
        return new, disjoint

    def macs(self, op) -> int:
        return size(op.eqn.outvars[0].aval.shape)


RULE = Shape()

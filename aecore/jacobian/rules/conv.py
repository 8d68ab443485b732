"""conv_general_dilated in its input (any strides, padding, dilation, groups); row norms map by
conv(·, K²) while rows have disjoint supports, e.g. conv(1, K²) for a first convolution."""

from __future__ import annotations

from aecore.jacobian.rules.base import Rule, dims, size


class Conv(Rule):
    primitives = frozenset({"conv_general_dilated"})

    def linear(self, op) -> bool:
        return op.dep[0] == 0  # linear in the image; in the kernel it is not x's map

    def row_norms(self, op, vals, disjoint):
        if not disjoint:
            return None
        return op.bind([vals[0], vals[1] * vals[1]])[0], False

    def macs(self, op) -> int:
        rhs = op.eqn.invars[1].aval.shape
        out_channels = rhs[op.eqn.params["dimension_numbers"].rhs_spec[0]]
        return size(op.eqn.outvars[0].aval.shape) * size(rhs) // out_channels

    def label(self, op) -> str:
        lhs, out = op.eqn.invars[0].aval.shape, op.eqn.outvars[0].aval.shape
        return f"conv {dims(lhs)}→{dims(out)}"


RULE = Conv()

"""dot_general: dense layers, x·W and W·x in any layout; row norms map by the squared constant."""

from __future__ import annotations

from aecore.jacobian.rules.base import Rule, size


class DotGeneral(Rule):
    primitives = frozenset({"dot_general"})

    def row_norms(self, op, vals, disjoint):
        if not disjoint:
            return None
        d = op.dep[0]
        squared = [v if i == d else v * v for i, v in enumerate(vals)]
        return op.bind(squared)[0], False

    def macs(self, op) -> int:
        (lc, _), _ = op.eqn.params["dimension_numbers"]
        lhs = op.eqn.invars[0].aval.shape
        return size(op.eqn.outvars[0].aval.shape) * size([lhs[i] for i in lc])

    def label(self, op) -> str:
        n_in = size(op.eqn.invars[op.dep[0]].aval.shape)
        return f"dense {n_in}→{size(op.eqn.outvars[0].aval.shape)}"

    def has_matrix(self, op) -> bool:
        """Is it x ↦ x·W against a 2-D constant W (x a vector, no batch dimensions)?"""
        d = op.dep[0]
        (_, _), (lb, rb) = op.eqn.params["dimension_numbers"]
        if lb or rb or not isinstance(op.ins[1 - d], int) or op.eqn.invars[d].aval.ndim != 1:
            return False
        return op.eqn.invars[1 - d].aval.ndim == 2

    def matrix(self, op, env):
        """[n_out, n_in] matrix of a `has_matrix` equation: the constant or its transpose.

        Flattening reshapes and dtype casts around it keep the row-major order, so no identity
        has to be pushed through the map.
        """
        d = op.dep[0]
        (lc, rc), _ = op.eqn.params["dimension_numbers"]
        w = env[op.ins[1 - d]]
        return w.T if (rc if d == 0 else lc)[0] == 0 else w


RULE = DotGeneral()

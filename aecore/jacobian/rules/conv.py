"""conv_general_dilated in its input (any strides, padding, dilation, groups); row norms map by
conv(·, K²) while rows have disjoint supports, e.g. conv(1, K²) for a first convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from aecore.jacobian.rules.base import Rule, dims, size


class Conv(Rule):
    primitives = frozenset({"conv_general_dilated"})

    def linear(self, op) -> bool:
        return op.dep[0] == 0  # linear in the image; in the kernel it is not x's map

    def row_norms(self, op, vals, disjoint):
        if not disjoint:
            return None
        return op.bind([vals[0], vals[1] * vals[1]])[0], False

    def pull(self, op, vals, rows):
        p = op.eqn.params
        if any(s != 1 for s in p["lhs_dilation"]) or p["feature_group_count"] != 1:
            return None
        if p["batch_group_count"] != 1 or all(s == 1 for s in p["window_strides"]):
            return None  # unstrided: XLA differentiates its transposed convolution well
        return _pull(op, rows, vals[1])

    def macs(self, op) -> int:
        rhs = op.eqn.invars[1].aval.shape
        out_channels = rhs[op.eqn.params["dimension_numbers"].rhs_spec[0]]
        return size(op.eqn.outvars[0].aval.shape) * size(rhs) // out_channels

    def label(self, op) -> str:
        lhs, out = op.eqn.invars[0].aval.shape, op.eqn.outvars[0].aval.shape
        return f"conv {dims(lhs)}→{dims(out)}"


RULE = Conv()


def _pull(op, rows, kernel):
    """rows · A through one convolution (no lhs dilation, no groups), [R, *in_shape].

    The value is jax's transposed convolution. Its gradient by autodiff would differentiate
    that transposed convolution in its kernel, which XLA:CPU runs many times slower than the
    same FLOPs as a matmul; here the kernel's cotangent is one matmul of the cotangent's image
    patches with the rows, and the rows' cotangent one forward convolution.
    """
    in_aval = op.eqn.invars[0].aval

    def transposed(r, k):
        _, vjp = jax.vjp(lambda v: op.bind([v, k])[0], jnp.zeros(in_aval.shape, r.dtype))
        return vjp(r)[0]

    @jax.custom_vjp
    def pull(r, k):
        return jax.vmap(transposed, (0, None))(r, k)

    def fwd(r, k):
        return pull(r, k), (r, k)

    def bwd(res, ct):
        r, k = res
        ct_r = jax.vmap(lambda c: op.bind([c, k])[0])(ct)
        return ct_r, _kernel_cotangent(op, ct, r, k)

    pull.defvjp(fwd, bwd)
    return pull(rows, kernel)


def _kernel_cotangent(op, ct, rows, kernel):
    """Σ over rows, batch and positions of patches(ct) ⊗ rows, laid out like the kernel."""
    p = op.eqn.params
    dn = p["dimension_numbers"]
    _, rhs_spec, out_spec = dn
    window = tuple(kernel.shape[i] for i in rhs_spec[2:])
    patches = jax.vmap(
        lambda c: lax.conv_general_dilated_patches(
            c,
            window,
            p["window_strides"],
            p["padding"],
            rhs_dilation=p["rhs_dilation"],
            dimension_numbers=dn,
        )
    )(ct)  # [R, *out] with features (c_in, *window)
    feat = out_spec[1] + 1
    pm = jnp.moveaxis(patches, feat, -1) if feat != patches.ndim - 1 else patches
    rm = jnp.moveaxis(rows, feat, -1) if feat != rows.ndim - 1 else rows
    dk = pm.reshape(-1, pm.shape[-1]).T @ rm.reshape(-1, rm.shape[-1])  # [c_in·win, c_out]
    dk = dk.reshape(kernel.shape[rhs_spec[1]], *window, kernel.shape[rhs_spec[0]])
    perm = [0] * kernel.ndim  # canonical (I, *spatial, O) -> the kernel's own layout
    perm[rhs_spec[1]] = 0
    for j, axis in enumerate(rhs_spec[2:]):
        perm[axis] = 1 + j
    perm[rhs_spec[0]] = kernel.ndim - 1
    return dk.transpose(perm).astype(kernel.dtype)

"""Cost of the exact contractive (CAE) training step per Jacobian route, against a plain AE step.

Run: `python -m benchmarks.jacobian [--quick] [--out PATH] [--devices]`; see benchmarks/README.md.
Every row times the library's own jitted step (`aecore.train.make_train_step`), routes interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aecore import jacobian, make_autoencoder
from aecore.models import Autoencoder, MLPDecoder
from aecore.objective import Objective
from aecore.regularizers import Term
from aecore.train import init_optimizer, make_train_step
from benchmarks.tables import add_route_order

ROUTES = (
    "plain",
    "auto",
    "closed_form",
    "structured",
    "peel",
    "blocks",
    "peeled_ref",
    "jacfwd",
    "jacrev",
    "hutchinson",
    "torch_jacrev",
)
CONTRACTIVE = 0.1
LEARNING_RATE = 1e-3
SLOW_STEP_S = 3.0  # jacfwd/jacrev rows whose single step takes longer are skipped (full run)
SLOW_REPS = 5  # timed steps of routes slower than SLOW_STEP_S / 3 (full run's wide models)
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
# --max-memory's default: what the whole process may hold at its peak (a 4 GB laptop, with
# some room left for the operating system). A step whose compiled XLA temporaries do not fit
# beside what the process holds already runs in chunks (`Objective(chunk_size=)`), or is
# skipped with a note when even one example at a time does not fit.
MAX_MEMORY_MB = 3500.0
# XLA's compiled temp size undercounts what a CPU step really takes: the conv encoder's jacfwd
# step (2,534 MB of temps) raised this process's peak by 3,804 MB (1.5×). A step is budgeted at
# this multiple of its temps.
TEMP_FACTOR = 2.0
# Routes whose Jacobians `Objective(chunk_size=)` evaluates chunk by chunk.
CHUNKABLE = ("auto", "closed_form", "structured", "peel", "blocks", "jacfwd", "jacrev")


def rss_mb() -> float:
    """Resident memory of this process now, MB (Linux /proc; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (`getrusage`: KB on Linux, bytes on
    macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


class OverBudget(Exception):
    """A route's compiled step needs more temporary memory than --max-memory leaves it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked autoencoder: `make_autoencoder(input_shape, hidden=..., ...)`."""

    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    architecture: str = "mlp"
    activation: str = "sigmoid"

    def build(self, key: int = 0):
        return make_autoencoder(
            self.input_shape,
            hidden=self.hidden,
            activation=self.activation,
            architecture=self.architecture,
            key=key,
        )

    @property
    def is_mlp(self) -> bool:
        return self.architecture == "mlp"


class UserDense(nnx.Module):
    """A user's encoder written with `nnx.Linear` (not aecore's classes): act(W_l ⋯ act(W_1 x))."""

    def __init__(self, sizes: Sequence[int], activation, key: int):
        rngs = nnx.Rngs(key)
        self.linears = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.activation = activation

    def __call__(self, x):
        h = x.reshape(-1)
        for lin in self.linears:
            h = self.activation(lin(h))
        return h


def _jnp_encoder(params: dict, x: jax.Array) -> jax.Array:
    """A user's encoder in plain jax.numpy: tanh(x W + b)."""
    return jnp.tanh(x.reshape(-1) @ params["w"] + params["b"])


class UserJnp(nnx.Module):
    """Holds the arrays of `_jnp_encoder` so that the optimizer sees them; calls the function."""

    def __init__(self, d: int, k: int, key: int):
        self.w = nnx.Param(jax.random.normal(jax.random.key(key), (d, k)) / np.sqrt(d))
        self.b = nnx.Param(jnp.zeros((k,)))

    def __call__(self, x):
        return _jnp_encoder({"w": self.w[...], "b": self.b[...]}, x)


class UserConv(nnx.Module):
    """One `nnx.Conv` 3×3 stride 2 and relu, flattened to the code."""

    def __init__(self, channels: int, key: int):
        self.conv = nnx.Conv(1, channels, (3, 3), strides=2, rngs=nnx.Rngs(key))

    def __call__(self, x):
        return jax.nn.relu(self.conv(x)).reshape(-1)


class UserResLN(nnx.Module):
    """A CIFAR-sized residual MLP as a user writes it: dense d→w, two pre-LayerNorm residual
    blocks h + gelu(dense(LN(h))), dense w→k, tanh."""

    def __init__(self, d: int, width: int, code: int, key: int, blocks: int = 2):
        rngs = nnx.Rngs(key)
        self.inp = nnx.Linear(d, width, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(blocks)])
        self.dense = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(blocks)])
        self.out = nnx.Linear(width, code, rngs=rngs)

    def rest(self, a):
        """Everything after the first dense map (the hand-written peeled reference's J_rest)."""
        h = a
        for norm, dense in zip(self.norms, self.dense, strict=True):
            h = h + jax.nn.gelu(dense(norm(h)))
        return jnp.tanh(self.out(h))

    def __call__(self, x):
        return self.rest(self.inp(x.reshape(-1)))

    def first(self):
        return self.inp.kernel[...]  # [d, w]: a = x W + b


def _jnp_res_ln(p: dict, x: jax.Array) -> jax.Array:
    """The same residual MLP in plain jax.numpy (LayerNorm written out)."""
    h = x.reshape(-1) @ p["w0"] + p["b0"]
    for i in range(2):
        c = h - jnp.mean(h)
        z = c / jnp.sqrt(jnp.mean(c * c) + 1e-6) * p[f"g{i}"]
        h = h + jax.nn.gelu(z @ p[f"w{i + 1}"] + p[f"b{i + 1}"])
    return jnp.tanh(h @ p["w3"] + p["b3"])


class UserJnpResLN(nnx.Module):
    """Holds the arrays of `_jnp_res_ln` for the optimizer; calls the function."""

    def __init__(self, d: int, width: int, code: int, key: int):
        keys = jax.random.split(jax.random.key(key), 4)
        shapes = [(d, width), (width, width), (width, width), (width, code)]
        for i, (k, shape) in enumerate(zip(keys, shapes, strict=True)):
            setattr(self, f"w{i}", nnx.Param(jax.random.normal(k, shape) / np.sqrt(shape[0])))
            setattr(self, f"b{i}", nnx.Param(jnp.zeros(shape[1])))
        self.g0, self.g1 = nnx.Param(jnp.ones(width)), nnx.Param(jnp.ones(width))

    def params(self) -> dict:
        names = [f"{a}{i}" for a in "wb" for i in range(4)] + ["g0", "g1"]
        return {n: getattr(self, n)[...] for n in names}

    def __call__(self, x):
        return _jnp_res_ln(self.params(), x)

    def rest(self, a):
        p = self.params()
        return _jnp_res_ln(p | {"w0": jnp.eye(a.shape[0]), "b0": jnp.zeros_like(a)}, a)

    def first(self):
        return self.w0[...]


class UserConvStack(nnx.Module):
    """conv 3×3 s2 1→32, relu, conv 3×3 s2 32→64, relu, dense → k, sigmoid (nnx layers)."""

    def __init__(self, code: int, key: int):
        rngs = nnx.Rngs(key)
        self.c1 = nnx.Conv(1, 32, (3, 3), strides=2, rngs=rngs)
        self.c2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
        self.out = nnx.Linear(7 * 7 * 64, code, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))
        return jax.nn.sigmoid(self.out(h.reshape(-1)))


class UserResConv(nnx.Module):
    """conv 3×3 s2 1→16, relu, two residual blocks h + relu(conv 3×3 16→16 (h)), dense → k,
    sigmoid (nnx layers): a small convolutional ResNet."""

    def __init__(self, code: int, key: int, channels: int = 16, blocks: int = 2):
        rngs = nnx.Rngs(key)
        self.stem = nnx.Conv(1, channels, (3, 3), strides=2, rngs=rngs)
        self.convs = nnx.List(
            [nnx.Conv(channels, channels, (3, 3), rngs=rngs) for _ in range(blocks)]
        )
        self.out = nnx.Linear(14 * 14 * channels, code, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.stem(x))
        for conv in self.convs:
            h = h + jax.nn.relu(conv(h))
        return jax.nn.sigmoid(self.out(h.reshape(-1)))


def _jnp_conv_stack(p: dict, x: jax.Array) -> jax.Array:
    """The same conv stack with `lax.conv_general_dilated` (SAME padding, NHWC/HWIO)."""
    h = x
    for i in (1, 2):
        h = jax.lax.conv_general_dilated(
            h[None], p[f"k{i}"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
        h = jax.nn.relu(h + p[f"c{i}"])
    return jax.nn.sigmoid(h.reshape(-1) @ p["w"] + p["b"])


class UserJnpConvStack(nnx.Module):
    def __init__(self, code: int, key: int):
        k = jax.random.split(jax.random.key(key), 3)
        self.k1 = nnx.Param(jax.random.normal(k[0], (3, 3, 1, 32)) / 3)
        self.k2 = nnx.Param(jax.random.normal(k[1], (3, 3, 32, 64)) / np.sqrt(9 * 32))
        self.w = nnx.Param(jax.random.normal(k[2], (7 * 7 * 64, code)) / np.sqrt(7 * 7 * 64))
        self.c1, self.c2 = nnx.Param(jnp.zeros(32)), nnx.Param(jnp.zeros(64))
        self.b = nnx.Param(jnp.zeros(code))

    def __call__(self, x):
        names = ("k1", "k2", "w", "c1", "c2", "b")
        return _jnp_conv_stack({n: getattr(self, n)[...] for n in names}, x)


def peeled_reference(model, x: jax.Array) -> jax.Array:
    """Hand-written exact ‖J‖² [B] treating only the first dense map structurally: G = W₁ᵀW₁
    once per batch, M = J_rest(a₁) by jacrev in the hidden space, ‖J‖² = Σ (M G) ⊙ M."""
    enc = model.encoder
    w = enc.first()  # [d, n_1]
    g = w.T @ w
    bias = enc.inp.bias[...] if hasattr(enc, "inp") else enc.b0[...]
    a = x.reshape(x.shape[0], -1) @ w + bias  # [B, n_1]
    m = jax.vmap(jax.jacrev(enc.rest))(a)  # [B, k, n_1]
    return jnp.sum(jnp.einsum("bkn,nm->bkm", m, g) * m, axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class UserSpec:
    """An autoencoder whose encoder a user wrote (`kind`: a key of `_USER_ENCODERS` or "nnx"),
    aecore's MLP decoder; `own` names aecore's own model of the same shape (its row is the
    reference). Encoders with a `first()` method also get the hand-written peeled reference."""

    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    kind: str
    own: str | None = None
    only: tuple[str, ...] | None = None  # the routes worth timing (None: all that apply)
    is_mlp = False

    def build(self, key: int = 0):
        d = int(np.prod(self.input_shape))
        if self.kind == "nnx":
            enc = UserDense((d, *self.hidden), jax.nn.sigmoid, key)
            dec_hidden = tuple(reversed(self.hidden[:-1]))
        else:
            enc = _USER_ENCODERS[self.kind](d, self.hidden, key)
            dec_hidden = ()
        code = int(np.prod(jax.eval_shape(enc, jnp.zeros(self.input_shape)).shape))
        acts = ["sigmoid"] * len(dec_hidden)
        dec = MLPDecoder(code, dec_hidden, acts, self.input_shape, key=jax.random.key(key + 1))
        return Autoencoder(enc, dec, output="sigmoid")


# jacfwd costs 50-100× the other exact routes on the wide models below (explain's
# multiply-adds): one step would take minutes, so those rows time the rest.
_BEYOND_CHAINS = (
    "plain",
    "auto",
    "structured",
    "peel",
    "blocks",
    "peeled_ref",
    "jacrev",
    "hutchinson",
)

_USER_ENCODERS = {
    "jnp": lambda d, hidden, key: UserJnp(d, hidden[-1], key),
    "conv": lambda d, hidden, key: UserConv(hidden[0], key),
    "res-ln-nnx": lambda d, hidden, key: UserResLN(d, hidden[0], hidden[-1], key),
    "res-ln-jnp": lambda d, hidden, key: UserJnpResLN(d, hidden[0], hidden[-1], key),
    "conv-stack-nnx": lambda d, hidden, key: UserConvStack(hidden[-1], key),
    "conv-stack-jnp": lambda d, hidden, key: UserJnpConvStack(hidden[-1], key),
    "res-conv-nnx": lambda d, hidden, key: UserResConv(hidden[-1], key),
}

MODELS = {
    "mlp-784-64": ModelSpec((784,), (64,)),
    "mlp-784-256": ModelSpec((784,), (256,)),
    "mlp-784-1024": ModelSpec((784,), (1024,)),
    "mlp-784-256-32": ModelSpec((784,), (256, 32)),
    "mlp-784-512-256-32": ModelSpec((784,), (512, 256, 32)),
    "mlp-784-1000-500": ModelSpec((784,), (1000, 500)),
    "conv-28x28x1-32": ModelSpec((28, 28, 1), (32,), architecture="conv"),
    "mlp-784-256-tanh": ModelSpec((784,), (256,), activation="tanh"),
    "user-nnx-784-256": UserSpec((784,), (256,), "nnx", own="mlp-784-256"),
    "user-nnx-784-256-32": UserSpec((784,), (256, 32), "nnx", own="mlp-784-256-32"),
    "user-jnp-784-256": UserSpec((784,), (256,), "jnp", own="mlp-784-256-tanh"),
    "user-conv-28x28x1-16": UserSpec((28, 28, 1), (16,), "conv"),
    "res-ln-mlp-3072": UserSpec((3072,), (512, 64), "res-ln-nnx", only=_BEYOND_CHAINS),
    "res-ln-mlp-3072-jnp": UserSpec((3072,), (512, 64), "res-ln-jnp", only=_BEYOND_CHAINS),
    "conv-28-c32s2-c64s2-d16": UserSpec(
        (28, 28, 1), (32, 64, 16), "conv-stack-nnx", only=_BEYOND_CHAINS
    ),
    "conv-28-c32s2-c64s2-d16-jnp": UserSpec(
        (28, 28, 1), (32, 64, 16), "conv-stack-jnp", only=_BEYOND_CHAINS
    ),
    "res-conv-28-c16s2-r2-d16": UserSpec(
        (28, 28, 1), (16, 16), "res-conv-nnx", only=_BEYOND_CHAINS
    ),
}
QUICK_MODELS = (
    "mlp-784-256",
    "mlp-784-256-32",
    "user-nnx-784-256",
    "user-nnx-784-256-32",
    "user-conv-28x28x1-16",
)
FULL_MODELS = tuple(MODELS)


def _explain(spec, batch: int = 128) -> jacobian.Explanation:
    model = spec.build()
    return jacobian.explain(model.encode, jnp.zeros((batch, *spec.input_shape), jnp.float32))


def applicable_routes(spec, routes: Sequence[str]) -> list[str]:
    """Routes that exist for this model, as the engine finds them (`jacobian.explain`)."""
    costs = _explain(spec).costs
    out = []
    for r in routes:
        if getattr(spec, "only", None) is not None and r not in spec.only:
            continue
        if r == "closed_form" and "closed_form" not in costs:
            continue
        if r == "structured" and not any(c.startswith(("structured", "closed")) for c in costs):
            continue  # on a one-layer chain mode="structured" runs the closed form
        if r == "torch_jacrev" and not spec.is_mlp:
            continue
        if r in ("peel", "blocks") and not any(c.startswith(r) for c in costs):
            continue
        if r == "peeled_ref" and not hasattr(spec.build().encoder, "first"):
            continue
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Steps. Every JAX row is `make_train_step(Objective(...), optax.adam)`.


def _objective(route: str, chunk_size: int | None = None) -> Objective:
    if route == "plain":
        return Objective()
    if route == "peeled_ref":
        term = Term("contractive", lambda m, x, *_: peeled_reference(m, x), CONTRACTIVE)
        return Objective(extra_terms=(term,))
    if route == "hutchinson":
        # A 1-probe ESTIMATE of the penalty (frobenius_sq_estimate's default method, jvp).
        return Objective(contractive=CONTRACTIVE, contractive_probes=1)
    return Objective(contractive=CONTRACTIVE, jacobian_mode=route, chunk_size=chunk_size)


class JaxRunner:
    """One jitted step of one route, with its own copy of the model and Adam state.

    With `max_memory_mb`, a step whose XLA temporaries (× `TEMP_FACTOR`) exceed what the
    process may still take (`max_memory_mb` − its resident memory now) is recompiled with
    `chunk_size` halved until it fits (`note` says so), or raises `OverBudget` (one line) when
    no chunk size fits.
    """

    def __init__(
        self, spec: ModelSpec, route: str, x: jax.Array, device=None, *, max_memory_mb=None
    ):
        optimizer = optax.adam(LEARNING_RATE)
        model = spec.build()
        opt_state = init_optimizer(optimizer, model)
        if device is not None:
            model, opt_state, x = jax.device_put((model, opt_state, x), device)
        self.x = x
        self.key = jax.random.key(1)
        self.model, self.opt_state = model, opt_state
        self.penalty, self.chunk_size, self.note = None, None, ""
        t0 = time.perf_counter()
        self._compile(route, optimizer, None)
        self.compile_s = time.perf_counter() - t0
        if max_memory_mb is not None:
            self._fit_budget(route, optimizer, max_memory_mb)

    def _compile(self, route: str, optimizer, chunk_size: int | None) -> None:
        step = make_train_step(_objective(route, chunk_size), optimizer)
        self.compiled = step.lower(self.model, self.opt_state, self.x, self.key).compile()
        self.gflop = _flops(self.compiled) / 1e9
        self.temp_bytes = _temp_bytes(self.compiled)
        self.chunk_size = chunk_size

    def _fit_budget(self, route: str, optimizer, max_memory_mb: float) -> None:
        free_mb = (max_memory_mb - rss_mb()) / TEMP_FACTOR
        full_mb = self.temp_bytes / 1e6
        if not full_mb > free_mb:  # NaN (not reported) counts as fitting
            return
        over = (
            f"XLA temps {full_mb:.0f} MB > {max(free_mb, 0):.0f} MB = (--max-memory "
            f"{max_memory_mb:.0f} - resident) / {TEMP_FACTOR:g}"
        )
        if route not in CHUNKABLE:
            raise OverBudget(f"skipped: {over}; this route has no chunked form")
        self._compile(route, optimizer, 1)  # the least it can take: if this does not fit, skip
        if self.temp_bytes / 1e6 > free_mb:
            raise OverBudget(f"skipped: {over}, {self.temp_bytes / 1e6:.0f} MB at chunk_size 1")
        chunk = self.x.shape[0] // 2
        while chunk > 1:  # the largest chunk that fits (fewest sequential pieces)
            self._compile(route, optimizer, chunk)
            if self.temp_bytes / 1e6 <= free_mb:
                break
            chunk //= 2
        if chunk == 1:
            self._compile(route, optimizer, 1)
        self.note = f"{over}: chunk_size {chunk} ({self.temp_bytes / 1e6:.0f} MB)"

    def step(self) -> None:
        self.model, self.opt_state, metrics = self.compiled(
            self.model, self.opt_state, self.x, self.key
        )
        jax.block_until_ready(metrics)
        if self.penalty is None:  # the first step sees the initial weights, shared by all routes
            self.penalty = float(metrics.get("contractive", np.nan)) / CONTRACTIVE


def _flops(compiled) -> float:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports costs
        return float("nan")
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _temp_bytes(compiled) -> float:
    try:
        return float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001
        return float("nan")


class TorchRunner:
    """The same MLP autoencoder and objective in PyTorch, CAE penalty by torch.func vmap(jacrev).

    Weights are copied from the JAX model, so the first-step penalty must match the JAX routes.
    """

    def __init__(self, spec: ModelSpec, route: str, x: jax.Array, device=None, **_):
        del route, device
        import torch  # optional extra

        self.torch = torch
        model = spec.build()
        enc = [(np.asarray(l.kernel[...]), np.asarray(l.bias[...])) for l in model.encoder.layers]
        dec = [(np.asarray(l.kernel[...]), np.asarray(l.bias[...])) for l in model.decoder.layers]
        acts = [l.activation for l in model.encoder.layers]
        dec_acts = [l.activation for l in model.decoder.layers]
        self.encoder = self._mlp(enc, acts)
        self.decoder = self._mlp(dec, dec_acts)
        self.params = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=LEARNING_RATE)
        self.x = torch.from_numpy(np.array(x, np.float32).reshape(x.shape[0], -1))
        self.jac = torch.func.vmap(torch.func.jacrev(self.encoder))
        self.compile_s, self.gflop, self.temp_bytes, self.penalty = 0.0, float("nan"), None, None
        self.chunk_size, self.note = None, ""

    def _mlp(self, layers, acts):
        torch = self.torch
        mods = []
        for (kernel, bias), act in zip(layers, acts, strict=True):
            lin = torch.nn.Linear(*kernel.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(kernel.T.copy()))
                lin.bias.copy_(torch.from_numpy(bias.copy()))
            mods.append(lin)
            mods.append(
                {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}.get(
                    act, torch.nn.Identity
                )()
            )
        return torch.nn.Sequential(*mods)

    def step(self) -> None:
        x = self.x
        self.opt.zero_grad(set_to_none=True)
        x_hat = self.torch.sigmoid(self.decoder(self.encoder(x)))
        recon = ((x_hat - x) ** 2).sum(dim=1).mean()
        pen = (self.jac(x) ** 2).sum(dim=(1, 2)).mean()
        loss = recon + CONTRACTIVE * pen
        loss.backward()
        self.opt.step()
        if self.penalty is None:
            self.penalty = float(pen.detach())


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Harness.


def matmul_peak_gflops(n: int = 2048, reps: int = 5, device=None) -> float:
    """float32 GFLOP/s of one large jitted matmul: the physical limit of this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    if device is not None:
        a = jax.device_put(a, device)
    f = jax.jit(lambda u: u @ u)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def run_model(
    name: str,
    spec: ModelSpec,
    routes: Sequence[str],
    *,
    batch: int = 128,
    reps: int = 20,
    warmup: int = 2,
    skip_slow: bool = False,
    slow_reps: int = SLOW_REPS,
    device=None,
    max_memory_mb: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Times `routes` round-robin on one model; one record per route (see README columns).

    `max_memory_mb`: see `JaxRunner`; a route that cannot fit gets a record with
    `ms_per_step` None and the reason in `note`, and is not timed.
    """
    x = jax.random.uniform(jax.random.key(0), (batch, *spec.input_shape), jnp.float32)
    runners: dict[str, object] = {}
    first: dict[str, float] = {}
    records: dict[str, dict] = {}
    for route in applicable_routes(spec, routes):
        base = {"model": name, "route": route, "batch": batch, "note": ""}
        if route == "torch_jacrev" and not torch_available():
            log(f"  {name}/{route}: skipped (torch not installed: pip install torch==2.13.0)")
            continue
        make = TorchRunner if route == "torch_jacrev" else JaxRunner
        try:
            runner = make(spec, route, x, device, max_memory_mb=max_memory_mb)
        except OverBudget as e:
            records[route] = {**base, "ms_per_step": None, "reps": 0, "note": str(e)}
            log(f"  {name}/{route}: {e}")
            continue
        base.update(note=runner.note, chunk_size=runner.chunk_size)
        t0 = time.perf_counter()
        runner.step()
        first_s = time.perf_counter() - t0
        if skip_slow and route in ("jacfwd", "jacrev", "torch_jacrev") and first_s > SLOW_STEP_S:
            records[route] = {
                **base,
                "ms_per_step": first_s * 1e3,
                "reps": 1,
                "compile_s": runner.compile_s,
                "gflop": runner.gflop,
                "temp_bytes": runner.temp_bytes,
                "penalty": runner.penalty,
                "note": _join(
                    runner.note, f"one step took {first_s:.1f} s > {SLOW_STEP_S} s: not repeated"
                ),
            }
            log(f"  {name}/{route}: {first_s:.1f} s per step, skipped from timing")
            continue
        runners[route] = runner
        first[route] = first_s
        records[route] = {**base, "compile_s": runner.compile_s}
        if runner.note:
            log(f"  {name}/{route}: {runner.note}")
    for _ in range(max(warmup - 1, 0)):
        for runner in runners.values():
            runner.step()
    times: dict[str, list[float]] = {r: [] for r in runners}
    # Routes slower than SLOW_STEP_S / 3 a step get `slow_reps` timed steps, not `reps`.
    caps = {r: reps if first[r] < SLOW_STEP_S / 3 else min(reps, slow_reps) for r in runners}
    order = list(runners.items())
    for i in range(reps if order else 0):  # round-robin, rotated: noise hits all alike
        for route, runner in order[i % len(order) :] + order[: i % len(order)]:
            if len(times[route]) >= caps[route]:
                continue
            t0 = time.perf_counter()
            runner.step()
            times[route].append(time.perf_counter() - t0)
            if route == "torch_jacrev":
                # libgomp's threads spin for a while after a parallel region, stealing the cores
                # from the step timed next; let them go to sleep outside the timed region.
                time.sleep(0.02)
    for route, runner in runners.items():
        if len(times[route]) < reps:
            records[route]["note"] = _join(
                records[route]["note"], f"slow route: median of {len(times[route])} steps"
            )
        records[route].update(
            ms_per_step=statistics.median(times[route]) * 1e3,
            reps=len(times[route]),
            gflop=runner.gflop,
            temp_bytes=runner.temp_bytes,
            penalty=runner.penalty,
        )
    out = list(records.values())
    report = _explain(spec, batch)
    plain = records.get("plain", {}).get("ms_per_step")
    torch_ms = records.get("torch_jacrev", {}).get("ms_per_step")
    for r in out:
        ms = r["ms_per_step"]
        r["ratio_to_plain"] = ms / plain if plain and ms else None
        r["speedup_vs_torch"] = torch_ms / ms if torch_ms and ms else None
        gflop = r.get("gflop")
        r["gflops_achieved"] = gflop / (ms / 1e3) if ms and gflop and np.isfinite(gflop) else None
        r["memory_kind"] = "xla_temp_bytes" if r["route"] != "torch_jacrev" else "n/a"
        r["route_resolved"], r["macs"] = _resolved(report, r["route"])
    auto = add_route_order(out)
    if auto is not None:
        log(
            f"  predicted order {' < '.join(auto['predicted_order'])}; measured "
            f"{' < '.join(auto['measured_order'])}; auto ÷ fastest {auto['auto_over_fastest']:.2f}"
        )
    return out


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _resolved(report: jacobian.Explanation, route: str) -> tuple[str, int | None]:
    """What a route actually runs for this model (as `explain` names it) and its multiply-adds
    per batch (forward pass of the penalty, from the engine's cost model)."""
    costs = report.costs
    if route == "auto":
        resolved = report.choice
    elif route in ("structured", "peel", "blocks"):
        named = {r: c for r, c in costs.items() if r.startswith(route)}
        resolved = min(named, key=named.get) if named else "closed_form"
    else:
        resolved = route
    return resolved, costs.get(resolved)


def machine_slug(device=None) -> str:
    """A short name such as `cpu-2core-amd-epyc` (backend, cores, CPU or device kind)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        name = platform.processor() or ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1]
                        break
        except OSError:
            pass
        name = re.sub(r"\(.*?\)|processor|cpu|\d+-core", "", name, flags=re.I)
        words = re.findall(r"[a-z]+", name.lower())[:2] or ["unknown"]
        return f"cpu-{os.cpu_count()}core-" + "-".join(words)
    kind = re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-")
    return f"{device.platform}-{kind}"


def sweep(
    device=None,
    reps: int = 5,
    max_memory_mb: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Cost vs input width d, code width k, depth and batch (plain, auto, jacrev; sigmoid)."""
    configs = []
    for d in (196, 784, 3136):
        configs.append(("d", d, ModelSpec((d,), (256, 32)), 128))
    for k in (8, 32, 128):
        configs.append(("k", k, ModelSpec((784,), (256, k)), 128))
    for depth, hidden in (
        (1, (256,)),
        (2, (256, 32)),
        (3, (512, 256, 32)),
        (4, (512, 256, 64, 32)),
    ):
        configs.append(("depth", depth, ModelSpec((784,), hidden), 128))
    for b in (32, 128, 512):
        configs.append(("batch", b, ModelSpec((784,), (256, 32)), b))
    out = []
    for axis, value, spec, batch in configs:
        name = "mlp-" + "-".join(str(s) for s in (*spec.input_shape, *spec.hidden))
        recs = run_model(
            name,
            spec,
            ("plain", "auto", "jacrev"),
            batch=batch,
            reps=reps,
            device=device,
            max_memory_mb=max_memory_mb,
            log=log,
            skip_slow=True,
        )
        for r in recs:
            out.append({**r, "sweep_axis": axis, "sweep_value": value})
        log(
            f"  sweep {axis}={value}: "
            + ", ".join(f"{r['route']} {r['ms_per_step'] or float('nan'):.1f} ms" for r in recs)
        )
    return out


def plot_sweep(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = ("d", "k", "depth", "batch")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, axis in zip(axes, axes_names, strict=True):
        for route in ("plain", "auto", "jacrev"):
            pts = sorted(
                (r["sweep_value"], r["ms_per_step"])
                for r in records
                if r["sweep_axis"] == axis and r["route"] == route
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=route)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("ms / step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("CAE step (value_and_grad + Adam) vs d, k, depth, batch (784→256→32 base)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(records: Sequence[dict]) -> str:
    head = (
        f"{'model':<20} {'route':<13} {'runs':<22} {'ms/step':>9} {'×plain':>7} {'×torch':>7} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'temp MB':>8} {'compile s':>9} {'‖J‖² (1st)':>11} "
        f"{'GMAC':>8} {'×own':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in records:

        def f(v, fmt):
            return format(v, fmt) if isinstance(v, int | float) and np.isfinite(v) else "-"

        mb = r.get("temp_bytes")
        lines.append(
            f"{r['model']:<20} {r['route']:<13} {r.get('route_resolved', ''):<22} "
            f"{f(r['ms_per_step'], '9.2f')} {f(r.get('ratio_to_plain'), '7.2f')} "
            f"{f(r.get('speedup_vs_torch'), '7.2f')} {f(r.get('gflop'), '7.3f')} "
            f"{f(r.get('gflops_achieved'), '8.1f')} {f(mb / 1e6 if mb else None, '8.1f')} "
            f"{f(r.get('compile_s'), '9.2f')} {f(r.get('penalty'), '11.5g')} "
            f"{f(r['macs'] / 1e9 if r.get('macs') else None, '8.3f')} "
            f"{f(r.get('ratio_to_own'), '6.2f')}" + (f"  [{r['note']}]" if r.get("note") else "")
        )
    return "\n".join(lines)


def run_suite(
    models: dict[str, ModelSpec],
    routes: Sequence[str] = ROUTES,
    *,
    batch: int = 128,
    reps: int = 20,
    warmup: int = 2,
    skip_slow: bool = False,
    slow_reps: int = SLOW_REPS,
    device=None,
    max_memory_mb: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Records of every (model, route) pair; each model's routes timed round-robin."""
    records = []
    for name, spec in models.items():
        log(f"{name}: {', '.join(applicable_routes(spec, routes))}")
        model_records = run_model(
            name,
            spec,
            routes,
            batch=batch,
            reps=reps,
            warmup=warmup,
            skip_slow=skip_slow,
            slow_reps=slow_reps,
            device=device,
            max_memory_mb=max_memory_mb,
            log=log,
        )
        add_ratio_to_own(records + model_records, models)
        log(format_table(model_records))  # partial results survive an interrupted run
        records += model_records
    return records


def add_ratio_to_own(records: list[dict], models: dict) -> None:
    """`ratio_to_own`: this row's × plain ÷ the same route's × plain on aecore's own model.

    Each × plain comes from one model's round-robin (plain and the route side by side), so the
    ratio cancels the load drift between the two models' runs; both models share the decoder,
    so their plain steps cost the same.
    """
    for r in records:
        own = getattr(models.get(r["model"]), "own", None)
        ref = next((o for o in records if o["model"] == own and o["route"] == r["route"]), None)
        ok = ref is not None and r.get("ratio_to_plain") and ref.get("ratio_to_plain")
        r["ratio_to_own"] = r["ratio_to_plain"] / ref["ratio_to_plain"] if ok else None
        r["own_model"] = own if ok else None


def _json_safe(obj):
    """NaN (a cost the backend did not report) as null, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="five models (a few minutes, see README)"
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        default=MAX_MEMORY_MB,
        help="MB this process may hold: a step whose XLA temporaries do not fit runs in "
        f"chunks or is skipped with a note (default {MAX_MEMORY_MB:.0f}, fits a 4 GB laptop)",
    )
    parser.add_argument(
        "--out", default=None, help="results JSON (default results/<machine>[-quick].json)"
    )
    parser.add_argument("--reps", type=int, default=None, help="timed steps per route")
    parser.add_argument(
        "--models", default=None, help=f"comma-separated subset of {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--devices", action="store_true", help="run on every jax.devices() kind (one file each)"
    )
    args = parser.parse_args(argv)
    if not args.max_memory > 0:
        parser.error(f"--max-memory must be > 0 MB, got {args.max_memory}")
    start = time.perf_counter()
    devices = [None]
    if args.devices:
        seen = {}
        for dev in jax.devices():
            seen.setdefault(dev.device_kind, dev)
        devices = list(seen.values())
    all_records = []
    for device in devices:
        slug = machine_slug(device)
        reps = args.reps or (20 if args.quick else 30)
        names = QUICK_MODELS if args.quick else FULL_MODELS
        if args.models:
            names = tuple(args.models.split(","))
            for n in names:
                if n not in MODELS:
                    raise SystemExit(f"unknown model {n!r}; choose from {', '.join(MODELS)}")
        peak = matmul_peak_gflops(device=device)
        print(
            f"# {slug}: jax {jax.__version__}, {jax.default_backend()}, "
            f"float32 matmul peak {peak:.1f} GFLOP/s"
        )
        records = run_suite(
            {n: MODELS[n] for n in names},
            reps=reps,
            skip_slow=not args.quick,
            slow_reps=3 if args.quick else SLOW_REPS,
            device=device,
            max_memory_mb=args.max_memory,
        )
        sweep_records = []
        if not args.quick and not args.models:
            sweep_records = sweep(device=device, max_memory_mb=args.max_memory)
        for r in records + sweep_records:
            r["fraction_of_matmul_peak"] = (
                r["gflops_achieved"] / peak if r.get("gflops_achieved") else None
            )
        print(format_table(records))
        meta = {
            "machine": slug,
            "date": datetime.date.today().isoformat(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device_kind": (device or jax.devices()[0]).device_kind,
            "python": sys.version.split()[0],
            "matmul_peak_gflops": peak,
            "quick": args.quick,
            "contractive": CONTRACTIVE,
            "memory": "temp_bytes = XLA compiled memory_analysis().temp_size_in_bytes",
            "max_memory_mb": args.max_memory,
            # so far in this process (a multi-device run's later files include earlier devices)
            "peak_rss_mb": peak_rss_mb(),
            "wall_s": time.perf_counter() - start,
        }
        if torch_available():
            import torch

            meta["torch"] = torch.__version__
            meta["torch_threads"] = torch.get_num_threads()
        out = args.out if args.out and len(devices) == 1 else None
        if out is None:
            os.makedirs(RESULTS_DIR, exist_ok=True)
            suffix = "-quick" if args.quick else ""
            out = os.path.join(RESULTS_DIR, f"{slug}{suffix}.json")
        with open(out, "w") as f:
            payload = {"meta": meta, "records": records, "sweep": sweep_records}
            json.dump(_json_safe(payload), f, indent=1, allow_nan=False)
        print(
            f"# peak memory {meta['peak_rss_mb']:.0f} MB (max RSS of this process; "
            f"--max-memory {args.max_memory:.0f} MB), wall time {meta['wall_s']:.0f} s"
        )
        print(f"wrote {out}")
        if sweep_records:
            png = os.path.join(RESULTS_DIR, f"{slug}-sweep.png")
            plot_sweep(sweep_records, png)
            print(f"wrote {png}")
        all_records += records
    return all_records


if __name__ == "__main__":
    main()

"""Evaluation of trained autoencoders: codes, reconstructions, exact Jacobian norms and spectra,
saturation, linear probes, PCA subspace angles and contraction curves (NumPy outputs).

Every function takes any model of the `aecore.models` protocol: the input shape comes from the
data (checked against the model with `jax.eval_shape`), and the model runs in
`models.eval_mode` (Dropout off, BatchNorm running averages).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from flax import nnx
from jax.typing import ArrayLike

from aecore import _checks, jacobian, losses, models
from aecore.models import Model
from aecore.objective import Objective, reconstruction

if TYPE_CHECKING:
    from aecore.data import Dataset

# --------------------------------------------------------------------------------------------
# Input checks and batching


def input_shape(model: Model) -> tuple[int, ...] | None:
    """The per-example input shape the model declares (`model.encoder.input_shape` or
    `model.input_shape`), or None when it declares none (then the data's shape is used)."""
    for owner in (getattr(model, "encoder", None), model):
        shape = getattr(owner, "input_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


def _param_dtype(model):
    state = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    for leaf in jax.tree.leaves(state):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


def _check_x(model, x, name: str = "x") -> np.ndarray:
    """x as a NumPy array of the model's parameter dtype, after checking its shape."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be examples [N, *input_shape], got {name}.shape {x.shape}")
    expected = input_shape(model)
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape [N, *input_shape] = [N, {', '.join(map(str, expected))}] "
            f"for this model (input_shape {expected}), got {name}.shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (shape {x.shape})")
    # Strict dtype promotion: feed the parameters' dtype, never mix float32 and float64.
    x = x.astype(np.dtype(_param_dtype(model)), copy=False)
    models.check_protocol(model, x.shape[1:], x.dtype)
    return x


def _encode_eval(model, x):  # [B, *input_shape] -> [B, d_z], eval mode
    return models.apply_batch(lambda m, xi: m.encode(xi), models.eval_mode(model), x)[0]


def _in_chunks(fn: Callable, model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Applies a jitted fn(model, xb) -> [B, ...] over batches; the last batch is padded so that
    every call has one shape (one compilation), and the padding is dropped again."""
    _checks.check_positive_int("batch_size", batch_size)
    n = x.shape[0]
    size = min(batch_size, n)
    outs = []
    for start in range(0, n, size):
        xb = x[start : start + size]
        m = xb.shape[0]
        if m < size:
            xb = np.concatenate([xb, np.repeat(xb[-1:], size - m, axis=0)], axis=0)
        outs.append(np.asarray(fn(model, jnp.asarray(xb)))[:m])
    return np.concatenate(outs, axis=0)


@jax.jit
def _encode_batch(model, x):  # [B, *input_shape] -> [B, d_z]
    return _encode_eval(model, x)


@jax.jit
def _reconstruct_batch(model, x):
    m = models.eval_mode(model)
    return models.apply_batch(lambda mm, xi: mm.decode(mm.encode(xi)), m, x)[0]


@functools.partial(jax.jit, static_argnames=("loss",))
def _reconstruction_batch(model, x, *, loss):  # [B]
    m = models.eval_mode(model)
    return reconstruction(m, x, _encode_eval(m, x), loss=loss)


@functools.partial(jax.jit, static_argnames=("mode",))
def _frobenius_sq_batch(model, x, *, mode):  # [B]
    return jacobian.frobenius_sq(models.eval_mode(model).encode, x, mode=mode)


# --------------------------------------------------------------------------------------------
# Codes, reconstructions, errors


def encode(model: Model, x: ArrayLike, *, batch_size: int = 512) -> np.ndarray:
    """Codes h(x) [N, d_z] of the examples x [N, *input_shape] (jitted, in batches)."""
    x = _check_x(model, x)
    return _in_chunks(_encode_batch, model, x, batch_size)


def reconstruct(model: Model, x: ArrayLike, *, batch_size: int = 512) -> np.ndarray:
    """Reconstructions x_hat = f(decoder(h(x))) [N, *input_shape]."""
    x = _check_x(model, x)
    return _in_chunks(_reconstruct_batch, model, x, batch_size)


def reconstruction_error(model: Model, x: ArrayLike, *, loss: str, batch_size: int = 512) -> float:
    """Mean over examples of the per-example loss ("squared_error" or "cross_entropy"), i.e. the
    reconstruction term of `aecore.objective.reconstruction` on clean inputs."""
    _checks.check_choice("loss", loss, losses.LOSSES)
    x = _check_x(model, x)
    if loss == "cross_entropy":
        _checks.check_unit_interval("cross-entropy targets x", x)
    per_example = _in_chunks(
        functools.partial(_reconstruction_batch, loss=loss), model, x, batch_size
    )
    return float(np.mean(per_example))


def noise_ratio(model: Model, x: ArrayLike, *, sigma: float, seed: int) -> float:
    """How much added noise survives reconstruction: ‖x̂(x̃) − x‖² / ‖x̃ − x‖², summed over x.

    x̃ = x + N(0, σ²) drawn with `numpy.random.default_rng(seed)`. 1 means the model passes the
    noise through (a copier); a model that maps x̃ back onto the data gives less.

    Args:
      model: an autoencoder.
      x: clean inputs [N, *input_shape].
      sigma: noise standard deviation, > 0.
      seed: numpy seed of the noise.

    Returns:
      The ratio, a plain float.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    x = _check_x(model, x)
    rng = np.random.default_rng(seed)
    x_tilde = (x + sigma * rng.standard_normal(x.shape)).astype(x.dtype)
    x_hat = reconstruct(model, x_tilde)
    return float(np.sum((x_hat - x) ** 2) / np.sum((x_tilde - x) ** 2))


def psnr(x_hat: ArrayLike, x: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Peak signal-to-noise ratio per image in dB, peak value 1: 10 log10(1 / MSE).

    Args:
      x_hat: reconstructions [N, *shape].
      x: references [N, *shape], values in [0, 1].
      mask: optional boolean [*shape] or [N, *shape]; the MSE is then over the True pixels.

    Returns:
      [N] PSNR in dB (the MSE is floored at 1e-10, so identical images give 100 dB).
    """
    x_hat, x = np.asarray(x_hat, np.float64), np.asarray(x)
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x differ in shape: {x_hat.shape} vs {x.shape}")
    err = ((x_hat - x) ** 2).reshape(len(x), -1)
    if mask is not None:
        m = np.broadcast_to(mask, x.shape).reshape(len(x), -1)
        mse = (err * m).sum(1) / m.sum(1)
    else:
        mse = err.mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


# --------------------------------------------------------------------------------------------
# Jacobians


def jacobian_norms(
    model: Model, x: ArrayLike, *, mode: str = "auto", batch_size: int = 256
) -> np.ndarray:
    """Exact ‖∂h(x_i)/∂x_i‖_F per example [N] (the square root of `jacobian.frobenius_sq`)."""
    _checks.check_choice("mode", mode, jacobian.MODES)
    x = _check_x(model, x)
    sq = _in_chunks(functools.partial(_frobenius_sq_batch, mode=mode), model, x, batch_size)
    return np.sqrt(np.maximum(sq, 0.0))


def jacobian_spectrum(model: Model, x: ArrayLike, *, max_examples: int = 200) -> np.ndarray:
    """Singular values of each example's encoder Jacobian, [n, min(d_z, d)], descending.

    n = min(N, max_examples). A contractive encoder has a few large singular values (directions
    along the data manifold) and a fast-decaying tail (Rifai et al., 2011, Fig. 3).
    """
    _checks.check_positive_int("max_examples", max_examples)
    x = _check_x(model, x)[:max_examples]
    jac_fn = jax.jit(lambda m, xb: jacobian.jacobian(models.eval_mode(m).encode, xb))
    jac = np.asarray(jac_fn(model, jnp.asarray(x)))
    return _singular_values(jac.reshape(jac.shape[0], jac.shape[1], -1))  # of [n, k, d]


def _singular_values(stack: np.ndarray) -> np.ndarray:
    """Singular values [n, min(a, b)], descending, of a stack [n, a, b] of small matrices, in
    float64 on one BLAS thread.

    J and Jᵀ share their singular values, and LAPACK is fastest on the tall, C-contiguous
    stack. Threads inside each small SVD only wait on one another, the more so on a loaded
    machine: 488 wide [64, 500] matrices took 1.4-16 s through NumPy with OpenBLAS's two
    threads on this 2-core machine, tall on one thread 0.28 s.
    """
    if stack.shape[1] < stack.shape[2]:
        stack = np.swapaxes(stack, 1, 2)
    stack = np.ascontiguousarray(stack, dtype=np.float64)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.svd(stack, compute_uv=False)


@jax.jit
def _decoder_jacobians(model, x):  # [B, d, k]: J_g at each example's code
    m = models.eval_mode(model)
    z = _encode_eval(m, x)
    return jax.vmap(jax.jacfwd(lambda zi: m.decode(zi).reshape(-1)))(z)


# Multiply-adds of the float64 SVDs one evaluation may spend (~0.5 s here); wider decoders are
# measured on fewer examples (at least 16).
GEOMETRY_SVD_BUDGET = 10**9


def decoder_geometry(model: Model, x: ArrayLike, *, max_examples: int = 500) -> dict[str, float]:
    """The decoder's exact geometry at the codes of x (IRVAE's evaluation measures, exact).

    From the singular values s of J_g [d, k] at each code (k forward-mode products, then a
    float64 SVD of J_g itself, never an eigen-decomposition of G, whose condition number is
    J's squared): "decoder_distortion", the relaxed distortion E[tr G²]/E[tr G]² of
    G = J_gᵀJ_g (1/k for a scaled isometry, Lee et al. ICLR 2022); "metric_condition_median",
    the median condition number s_max²/s_min² of G; "mean_logdet_metric", the mean
    log det G = 2 Σ log s; "metric_singular_fraction", the fraction of examples whose G is
    numerically singular (s_min ≤ s_max·max(d, k)·eps of J's dtype, NumPy's rank tolerance; every
    example when k > d). The condition number is left out when that fraction is 1/2 or more
    (the median G is singular), the log-det when any G is: their values would be rounding
    noise. Computed on the first `max_examples` examples, fewer for wide decoders: at most
    ⌊GEOMETRY_SVD_BUDGET / (d·k·min(d, k))⌋ examples, but at least 16.
    """
    _checks.check_positive_int("max_examples", max_examples)
    x = _check_x(model, x)
    _, d, k = jax.eval_shape(_decoder_jacobians, model, jnp.asarray(x[:1])).shape
    affordable = max(16, GEOMETRY_SVD_BUDGET // (d * k * min(d, k)))
    x = x[: min(max_examples, affordable)]
    jac = _in_chunks(_decoder_jacobians, model, x, 128)  # [n, d, k], the model's dtype
    s = _singular_values(jac)  # [n, min(d, k)], descending
    sq = s**2
    metrics = {"decoder_distortion": float(np.mean(np.sum(sq**2, 1)) / np.mean(sq.sum(1)) ** 2)}
    # G is numerically singular where J's smallest singular value is below what J's own dtype
    # resolves (NumPy's matrix_rank tolerance): its condition number and log-det are then
    # rounding noise, not measurements.
    # (k > d: G has k − d zero eigenvalues that J's min(d, k) singular values do not show)
    singular = (s[:, -1] <= s[:, 0] * max(d, k) * np.finfo(jac.dtype).eps) | (k > d)
    metrics["metric_singular_fraction"] = float(np.mean(singular))
    if metrics["metric_singular_fraction"] < 0.5:  # the median example's G is resolved
        cond = np.where(singular, np.inf, sq[:, 0] / sq[:, -1])
        metrics["metric_condition_median"] = float(np.median(cond))
    if not singular.any():
        metrics["mean_logdet_metric"] = float(np.mean(np.sum(np.log(sq), axis=1)))
    return metrics


# --------------------------------------------------------------------------------------------
# Saturation


def code_activation(model: Model) -> str | None:
    """Name of the code layer's activation as the model declares it, or None.

    Read from `model.encoder.code_activation` (a user encoder can set it), else from the last
    layer with an `activation` name in `model.encoder.layers` or `model.encoder.code`.
    """
    enc = getattr(model, "encoder", None)
    declared = getattr(enc, "code_activation", None) or getattr(model, "code_activation", None)
    if isinstance(declared, str):
        return declared
    layers = getattr(enc, "layers", None)
    if (
        layers is not None
        and len(layers)
        and isinstance(getattr(layers[-1], "activation", None), str)
    ):
        return layers[-1].activation
    code_activation = getattr(getattr(enc, "code", None), "activation", None)
    return code_activation if isinstance(code_activation, str) else None


SATURATION_RULES = ("sigmoid", "tanh", "relu", "softplus", "identity")


def saturation(
    model: Model, x: ArrayLike, *, tol: float = 0.05, activation: str | None = None
) -> float:
    """Fraction of (example, code unit) pairs whose code unit is saturated, from the code values.

    Saturated means, by the code activation: sigmoid h < tol or h > 1 − tol; tanh |h| > 1 − tol;
    relu h == 0 (a dead unit on that example); softplus h < tol (its flat side; it has no upper
    saturation); identity never (returns 0.0). Contractive training drives codes into these flat
    regions, where g' ≈ 0 (Rifai et al., 2011, §5).

    Args:
      model: any model of the protocol.
      x: examples [N, *input_shape].
      tol: the distance to the flat region that counts as saturated, in [0, 0.5).
      activation: the code activation whose rule applies; None reads it from the model
        (`code_activation`), which a user encoder declares with `code_activation = "sigmoid"`.

    Raises:
      TypeError: the activation is neither given nor declared (says how to give it).
    """
    tol = float(tol)
    if not 0.0 <= tol < 0.5:
        raise ValueError(f"tol must lie in [0, 0.5), got {tol}")
    act = activation if activation is not None else code_activation(model)
    if act is None:
        enc = getattr(model, "encoder", model)
        raise TypeError(
            f"saturation needs the code activation of encoder {type(enc).__name__}: pass "
            f"activation= (one of {SATURATION_RULES}) or set code_activation on the encoder"
        )
    _checks.check_choice("code activation", act, SATURATION_RULES)
    h = encode(model, x).astype(np.float64)
    if act == "sigmoid":
        sat = (h < tol) | (h > 1.0 - tol)
    elif act == "tanh":
        sat = np.abs(h) > 1.0 - tol
    elif act == "relu":
        sat = h == 0.0
    elif act == "softplus":
        sat = h < tol
    else:
        sat = np.zeros(h.shape, dtype=bool)
    return float(np.mean(sat))


# --------------------------------------------------------------------------------------------
# Linear probe


def linear_probe(
    codes_train: ArrayLike,
    y_train: ArrayLike,
    codes_test: ArrayLike,
    y_test: ArrayLike,
    *,
    max_iter: int = 1000,
    C: float = 1.0,
) -> dict[str, float]:
    """Logistic regression on standardized codes: train on (codes_train, y_train), score on test.

    Returns:
      {"accuracy": test accuracy, "error": 1 − accuracy}, plain floats.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if y_train is None or y_test is None:
        raise ValueError(
            "linear_probe needs labels for both splits, got "
            f"y_train={'None' if y_train is None else 'given'}, "
            f"y_test={'None' if y_test is None else 'given'}"
        )
    codes_train = np.asarray(codes_train, dtype=np.float64)
    codes_test = np.asarray(codes_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    for name, c, y in (("train", codes_train, y_train), ("test", codes_test, y_test)):
        if c.ndim != 2 or y.ndim != 1 or len(c) != len(y):
            raise ValueError(
                f"codes_{name} must be [N, d_z] with y_{name} [N], "
                f"got shapes {c.shape} and {y.shape}"
            )
    if codes_train.shape[1] != codes_test.shape[1]:
        raise ValueError(
            f"codes_train and codes_test differ in width: {codes_train.shape[1]} vs "
            f"{codes_test.shape[1]}"
        )
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"y_train needs at least 2 classes, got {np.unique(y_train).tolist()}")
    _checks.check_positive_int("max_iter", max_iter)
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
    clf.fit(codes_train, y_train)
    accuracy = float(clf.score(codes_test, y_test))
    return {"accuracy": accuracy, "error": 1.0 - accuracy}


def precision_at_k(
    codes_train: ArrayLike, y_train: ArrayLike, codes_test: ArrayLike, y_test: ArrayLike, *, k: int
) -> float:
    """Retrieval precision@k: the mean fraction of each test code's k nearest training codes
    (Euclidean) that share its label.

    Args:
      codes_train: [N, d_z] codes searched. y_train: [N] their labels.
      codes_test: [M, d_z] query codes. y_test: [M] their labels.
      k: neighbours per query, 1 ≤ k ≤ N.

    Returns:
      Precision in [0, 1], a plain float.
    """
    from sklearn.neighbors import NearestNeighbors

    _checks.check_positive_int("k", k)
    codes_train = np.asarray(codes_train)
    if k > len(codes_train):
        raise ValueError(f"k must be <= the {len(codes_train)} training codes, got {k}")
    _, idx = NearestNeighbors(n_neighbors=k).fit(codes_train).kneighbors(codes_test)
    return float(np.mean(np.asarray(y_train)[idx] == np.asarray(y_test)[:, None]))


# --------------------------------------------------------------------------------------------
# Subspaces: PCA and linear autoencoders


def principal_angles(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Principal angles (radians, descending) between the column spaces of a [d, k1], b [d, k2].

    Orthonormal bases by QR (the columns must be linearly independent), then the singular values
    of Q_aᵀ Q_b are the cosines (Björck & Golub, 1973). Small angles are read from the sines
    (singular values of the residual Q_b − Q_a Q_aᵀ Q_b), where arccos loses accuracy. The result
    has min(k1, k2) entries, ordered like `scipy.linalg.subspace_angles`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must be [d, k1] and [d, k2], got shapes {a.shape}, {b.shape}")
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cos = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0)  # descending
    sin = np.linalg.svd(qb - qa @ (qa.T @ qb), compute_uv=False)[::-1]  # ascending angles
    sin = np.clip(sin, -1.0, 1.0)
    angles = np.where(cos**2 >= 0.5, np.arcsin(sin), np.arccos(cos))  # ascending
    return angles[::-1].copy()


def decoder_basis(model: Model, code_dim: int | None = None) -> np.ndarray:
    """The [d, k] Jacobian of the decoder's pre-output at the code h = 0, ∂decode_logits/∂h.

    For a linear decoder x̂ = W* h + c this is W* itself, whose column space x̂ − c lies in
    (untied: the last kernel transposed; tied: the first encoder kernel W_1); read from the
    computation, so it holds for any decoder. `code_dim` defaults to the model's code width.
    """
    if code_dim is None:
        shape = input_shape(model)
        if shape is None:
            raise TypeError(
                "decoder_basis needs code_dim= for a model that declares no input_shape"
            )
        code_dim = models.check_protocol(model, shape, _param_dtype(model))[0]
    m = models.eval_mode(model)
    h0 = jnp.zeros((code_dim,), _param_dtype(model))
    jac = np.asarray(jax.jacfwd(m.decode_logits)(h0))  # [*input_shape, k]
    return jac.reshape(-1, code_dim)


def _flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"expected examples [N, *input_shape], got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def pca_angles(model: Model, x_train: ArrayLike) -> np.ndarray:
    """Principal angles (radians) between a linear autoencoder's decoder subspace and the top-k
    PCA subspace of x_train, k the decoder's code width. Near 0 once a linear AE with squared
    error has converged (Baldi & Hornik, 1989); the weights themselves need not be orthogonal.
    """
    from sklearn.decomposition import PCA

    x_checked = _check_x(model, x_train, "x_train")
    code_dim = models.check_protocol(model, x_checked.shape[1:], x_checked.dtype)[0]
    x = _flat(x_checked)
    basis = decoder_basis(model, code_dim).astype(np.float64)  # [d, k]
    k = basis.shape[1]
    if k > min(x.shape):
        raise ValueError(
            f"decoder subspace has dimension {k}, more than PCA can give for x_train {x.shape}"
        )
    components = PCA(n_components=k).fit(x).components_  # [k, d]
    return principal_angles(basis, components.T)


def pca_reconstruction_error(x_train: ArrayLike, x_test: ArrayLike, k: int) -> float:
    """Mean per-example squared error Σ_j (x̂_j − x_j)² of rank-k PCA (fit on x_train) on x_test:
    the floor a linear autoencoder with k codes and squared error can reach."""
    from sklearn.decomposition import PCA

    _checks.check_positive_int("k", k)
    a, b = _flat(x_train), _flat(x_test)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x_train and x_test differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if k > min(a.shape):
        raise ValueError(f"k must be <= min(N, d) = {min(a.shape)} for x_train {a.shape}, got {k}")
    pca = PCA(n_components=k).fit(a)
    x_hat = pca.inverse_transform(pca.transform(b))
    return float(np.mean(np.sum((x_hat - b) ** 2, axis=1)))


# --------------------------------------------------------------------------------------------
# Contraction curves


def contraction_curve(
    model: Model,
    x: ArrayLike,
    *,
    radii: Sequence[float] | np.ndarray,
    num_pairs: int = 200,
    key: jax.Array,
) -> dict[str, np.ndarray]:
    """Contraction ratio ‖h(x) − h(x')‖ / ‖x − x'‖ against the distance r = ‖x − x'‖.

    For `num_pairs` examples drawn from x and random unit directions u (uniform on the sphere of
    the flattened input), x' = x + r u for every radius r; the same examples and directions serve
    all radii, so the curve is smooth in r. Rifai et al. (2011, §5.2, Fig. 2) use such curves to
    show that a CAE contracts more, and further away from the data, than a DAE.

    Returns:
      {"radii": [R], "ratio": [R] median ratio per radius}.
    """
    _checks.check_positive_int("num_pairs", num_pairs)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    if radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise ValueError(f"radii must be finite numbers > 0, got {radii.tolist()}")
    x = _check_x(model, x)
    k_idx, k_dir = jax.random.split(key)
    idx = np.asarray(jax.random.randint(k_idx, (num_pairs,), 0, x.shape[0]))
    x0 = x[idx]  # [P, *input_shape]
    u = np.asarray(jax.random.normal(k_dir, x0.shape, jnp.float32), dtype=np.float64)
    u = u / np.linalg.norm(u.reshape(num_pairs, -1), axis=1).reshape(-1, *([1] * (x.ndim - 1)))
    # Every radius in one encode call (one compiled shape): [(R + 1) * P, *input_shape].
    x1 = np.stack([(x0 + r * u).astype(x.dtype) for r in radii])  # [R, P, *input_shape]
    h = encode(model, np.concatenate([x0[None], x1]).reshape(-1, *x.shape[1:]))
    h = h.astype(np.float64).reshape(radii.size + 1, num_pairs, -1)
    # Divide by the realised distance: x' is rounded to the parameter dtype.
    dist = np.linalg.norm((x1.astype(np.float64) - x0).reshape(radii.size, num_pairs, -1), axis=2)
    dist = np.where(dist > 0, dist, radii[:, None])
    ratio = np.median(np.linalg.norm(h[1:] - h[:1], axis=2) / dist, axis=1)  # [R]
    return {"radii": radii, "ratio": ratio}


# --------------------------------------------------------------------------------------------
# Summary


def evaluate_model(
    model: Model,
    dataset: Dataset,
    objective: Objective,
    *,
    max_examples: int = 2000,
    probe: bool = True,
    activation: str | None = None,
) -> dict[str, float]:
    """Summary metrics of a trained model on a `aecore.data.Dataset`, as plain Python floats.

    Keys: "reconstruction_error" (test split, `objective.loss`), "mean_jacobian_norm" (mean exact
    ‖J‖_F on the test split), "saturation" (code saturation on the test split), and, when the
    dataset has labels and probe=True, "linear_probe_accuracy" (probe trained on train codes,
    scored on test codes), and the decoder's exact geometry on at most the first 500 test
    examples (`decoder_geometry`: "decoder_distortion", "metric_singular_fraction" and, where
    G is resolved, "metric_condition_median" and "mean_logdet_metric"). Each split is cut to its
    first `max_examples` examples. "saturation" is left out when the code activation is neither
    declared by the model nor given as `activation`.
    """
    _checks.check_positive_int("max_examples", max_examples)
    x_train = _check_x(model, dataset.x_train, "dataset.x_train")[:max_examples]
    x_test = _check_x(model, dataset.x_test, "dataset.x_test")[:max_examples]
    metrics = {
        "reconstruction_error": reconstruction_error(model, x_test, loss=objective.loss),
        "mean_jacobian_norm": float(np.mean(jacobian_norms(model, x_test))),
    }
    metrics |= decoder_geometry(model, x_test, max_examples=min(max_examples, 500))
    if activation is not None or code_activation(model) is not None:
        metrics["saturation"] = saturation(model, x_test, activation=activation)
    if probe and dataset.y_train is not None and dataset.y_test is not None:
        result = linear_probe(
            encode(model, x_train),
            np.asarray(dataset.y_train)[:max_examples],
            encode(model, x_test),
            np.asarray(dataset.y_test)[:max_examples],
        )
        metrics["linear_probe_accuracy"] = result["accuracy"]
    return {k: float(v) for k, v in metrics.items()}

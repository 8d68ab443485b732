"""Decoder output and loss must match the data: sigmoid + cross-entropy for binary inputs, linear
+ squared error for real inputs; the wrong pairings fail in the ways the lecture predicts.

Same undercomplete AE (32 sigmoid codes) in five settings:
- binary digits (pixels > 0.5), sigmoid decoder + cross-entropy (CE) — matched;
- real digits (standardized per pixel), linear decoder + squared error (SE) — matched;
- real digits, sigmoid decoder + SE — x̂ ∈ (0, 1) cannot reach the targets outside it, so its
  error stays above the floor Σ_j dist(x_j, [0, 1])²;
- binary digits, linear decoder + CE — aecore's CE consumes the decoder's logits, so training
  matches the sigmoid model, but the model's output x̂ is then a logit, not a probability;
- real digits, linear decoder + CE — invalid: the loss softplus(z) − x z is unbounded below for
  x > 1, so training would run away to −∞. aecore rejects it: eager loss calls and
  `aecore.train.fit` (before any step) raise a ValueError naming the range [0, 1]; that message
  is this setting's result.
Table (metrics.json) and figure decoder_loss.png: reconstructions and training curves.

Command:  python -m experiments.exp_decoder_loss [--quick] [--out DIR]
Expected: matched pairings reconstruct well; sigmoid + SE on real data keeps test SE above the
  floor and far above linear + SE; linear + CE on real data is rejected before training.
Runtime:  about 30 s on 2 CPU cores; --quick about 10 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aecore import Objective
from aecore import evaluate as ev
from aecore.data import normalize
from aecore.train import TrainingDiverged
from experiments import common

NAME = "decoder_loss"

# name -> (data kind, output activation, loss)
SETTINGS = {
    "binary: sigmoid + CE": ("binary", "sigmoid", "cross_entropy"),
    "real: linear + SE": ("real", "identity", "squared_error"),
    "real: sigmoid + SE": ("real", "sigmoid", "squared_error"),
    "binary: linear + CE": ("binary", "identity", "cross_entropy"),
    "real: linear + CE": ("real", "identity", "cross_entropy"),
}


def unit_interval_floor(x: np.ndarray) -> float:
    """Mean over examples of Σ_j dist(x_j, [0, 1])²: the least SE any x̂ ∈ [0, 1]^d can reach."""
    gap = x - np.clip(x, 0.0, 1.0)
    return float(np.mean(np.sum(gap.astype(np.float64) ** 2, axis=1)))


def run_setting(
    ctx: common.Setup,
    name: str,
    x_train: np.ndarray,
    x_test: np.ndarray,
    *,
    output: str,
    loss: str,
    train: dict,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray | None, list[dict]]:
    """Trains one pairing; returns (metrics, test reconstructions or None, history)."""
    row: dict[str, Any] = {}
    if loss == "cross_entropy":
        try:  # eager loss evaluation checks the target range
            from aecore.losses import sigmoid_cross_entropy

            sigmoid_cross_entropy(x_train[:2] * 0.0, x_train[:2])
            row["eager_check"] = "accepted"
        except ValueError as err:
            row["eager_check"] = f"ValueError: {err}"
    try:
        fit = common.fit_record(
            ctx,
            name,
            x_train,
            x_test,
            model=dict(hidden=(32,), activation="sigmoid", output=output),
            objective=Objective(loss=loss),
            train=train,
            seed=seed,
        )
    except ValueError as err:  # the run checks data and decoder against the loss up front
        row["status"] = f"rejected: ValueError: {err}"
        return row, None, []
    except TrainingDiverged as err:
        row["status"] = f"TrainingDiverged: {err}"
        return row, None, []
    history = fit.history
    losses = [r["reconstruction"] for r in history]
    row["status"] = "trained"
    row["final_train_loss"] = losses[-1]
    row["min_train_loss"] = min(losses)
    x_hat = ev.reconstruct(fit.model, x_test)
    row["test_squared_error"] = float(np.mean(np.sum((x_hat - x_test) ** 2, axis=1)))
    row["output_range"] = [float(x_hat.min()), float(x_hat.max())]
    row["fraction_outputs_outside_unit_interval"] = float(np.mean((x_hat < 0) | (x_hat > 1)))
    if loss == "cross_entropy" and row.get("eager_check") == "accepted":
        row["test_cross_entropy"] = ev.reconstruction_error(fit.model, x_test, loss=loss)
    return row, x_hat, history


def plot(
    path, panels: list[tuple[str, np.ndarray]], curves: dict[str, list], image_shape, n: int = 8
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(panels)
    fig = plt.figure(figsize=(n * 0.9 + 4.2, rows * 0.95 + 0.3))
    grid = fig.add_gridspec(rows, n + 5)
    for r, (title, imgs) in enumerate(panels):
        for c in range(n):
            ax = fig.add_subplot(grid[r, c])
            lim = (-2, 2) if "real" in title else (0, 1)  # standardized vs [0, 1] pixels
            ax.imshow(imgs[c].reshape(image_shape[:2]), cmap="gray", vmin=lim[0], vmax=lim[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
    ax = fig.add_subplot(grid[:, n + 1 :])
    for name, hist in curves.items():
        if hist:
            ax.plot([h["step"] for h in hist], [h["reconstruction"] for h in hist], label=name)
    ax.set_yscale("symlog")
    ax.set(xlabel="step", title="training loss (symlog)")
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    out, ds, x_train, x_test = ctx.out, ctx.ds, ctx.x_train, ctx.x_test
    data = {
        "binary": ((x_train > 0.5).astype(np.float32), (x_test > 0.5).astype(np.float32)),
        "real": normalize(x_train, x_test, method="standardize")[:2],
    }
    steps = 300 if args.quick else 3000
    train = dict(num_steps=steps, batch_size=128, learning_rate=3e-3, log_every=25)
    table, recon, curves = {}, {}, {}
    for name, (kind, output, loss) in SETTINGS.items():
        xtr, xte = data[kind]
        row, x_hat, hist = run_setting(
            ctx, name, xtr, xte, output=output, loss=loss, train=train, seed=args.seed
        )
        table[name] = {"data": kind, "output": output, "loss": loss, **row}
        recon[name], curves[name] = x_hat, hist
        print(f"{name}: {row}")
    real_floor = unit_interval_floor(data["real"][1])
    sig_se = table["real: sigmoid + SE"]["test_squared_error"]
    lin_se = table["real: linear + SE"]["test_squared_error"]
    bad = table["real: linear + CE"]
    checks = [
        common.check(
            "real_sigmoid_SE_test_error_minus_unit_interval_floor",
            sig_se - real_floor,
            ">=",
            0.0,
            why="a sigmoid output cannot leave [0, 1]",
        ),
        common.check(
            "real_sigmoid_SE_over_linear_SE",
            sig_se / lin_se,
            ">",
            1.0,
            why="on real data the linear decoder wins",
        ),
        common.Check(
            "linear_CE_on_real_rejected_eagerly",
            "the eager loss raises ValueError",
            bad["eager_check"],
            bad["eager_check"].startswith("ValueError"),
        ),
        # Without this check training would run the CE (unbounded below for x > 1) to -inf.
        common.Check(
            "linear_CE_on_real_rejected_before_training",
            "rejected before any step, naming [0, 1]",
            bad["status"],
            bad["status"].startswith("rejected") and "[0, 1]" in bad["status"],
        ),
    ]
    panels = [("binary input", data["binary"][1]), ("sigmoid+CE", recon["binary: sigmoid + CE"])]
    panels += [("real input", data["real"][1]), ("real: linear+SE", recon["real: linear + SE"])]
    panels += [("real: sigmoid+SE", recon["real: sigmoid + SE"])]
    plot(out / "decoder_loss.png", panels, curves, ds.input_shape)
    results = {
        "train": train,
        "real_test_unit_interval_floor": real_floor,
        "real_test_fraction_outside_unit_interval": float(
            np.mean((data["real"][1] < 0) | (data["real"][1] > 1))
        ),
        "settings": table,
    }
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()

"""Checks shared by the tests of models a user brings (nnx, Equinox, Linen): the contraction
curve and the whole evaluation summary on a small labelled dataset."""

import jax

from aecore import data, evaluate


def check_curve_and_summary(m, x, x_test, y, y_test, objective) -> dict:
    """The contraction curve at two radii and `evaluate_model`'s summary, returned for the
    caller's own assertions on its keys."""
    curve = evaluate.contraction_curve(
        m, x_test, radii=[0.1, 1.0], num_pairs=8, key=jax.random.key(0)
    )
    assert curve["ratio"].shape == (2,)
    ds = data.Dataset(
        name="user",
        x_train=x,
        x_test=x_test,
        y_train=y,
        y_test=y_test,
        value_range="unit",
        description="user data",
    )
    return evaluate.evaluate_model(m, ds, objective)

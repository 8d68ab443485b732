"""Where `fit`'s batches come from (an array, an iterable or a callable, checked before the first
step) and where they and the state live (one device, or a data-parallel mesh over all devices).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aecore import _checks, models
from aecore.objective import Objective
from aecore.train.step import TrainConfig


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so resumes match."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_at(
    x: np.ndarray, step: int, *, batch_size: int, seed: int, order: np.ndarray | None = None
) -> np.ndarray:
    """The batch of global step `step` (drop-remainder epochs), a pure function of its inputs.

    `order` is the step's epoch order when the caller already holds it (`fit` builds it once
    per epoch); it must equal `epoch_order(seed, epoch, len(x))`.
    """
    per_epoch = x.shape[0] // batch_size
    epoch, i = divmod(step, per_epoch)
    if order is None:
        order = epoch_order(seed, epoch, x.shape[0])
    return x[order[i * batch_size : (i + 1) * batch_size]]


class _ArrayBatches:
    """Batches of global steps from an array: `batch_at`, with each epoch's order built once."""

    def __init__(self, x: np.ndarray, batch_size: int, seed: int):
        self.x, self.batch_size, self.seed = x, batch_size, seed
        self.per_epoch = x.shape[0] // batch_size
        self._epoch: int | None = None
        self._order = np.empty(0, np.int64)  # the order of epoch `_epoch`

    def _order_of(self, step: int) -> np.ndarray:
        epoch = step // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.seed, epoch, self.x.shape[0])
        return self._order

    def __call__(self, step: int) -> np.ndarray:
        order = self._order_of(step)
        return batch_at(self.x, step, batch_size=self.batch_size, seed=self.seed, order=order)

    def rows(self, step: int) -> _Rows:
        """The batch of `step` as a lazy view: only the rows asked for are gathered."""
        i = step % self.per_epoch
        idx = self._order_of(step)[i * self.batch_size : (i + 1) * self.batch_size]
        return _Rows(self.x, idx)


class _Rows:
    """x[idx] without the copy: `make_array_from_callback` reads only this process's shards."""

    def __init__(self, x: np.ndarray, idx: np.ndarray):
        self.x, self.idx = x, idx
        self.shape = (len(idx), *x.shape[1:])

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.x[self.idx[key[0]]][(slice(None), *key[1:])]


def _is_array(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype") and not callable(data)


def _check_batch_data(name: str, x, objective: Objective) -> None:
    # Checked here, before any step: inside the jitted step the values are not concrete, and a
    # cross-entropy on data outside [0, 1] would silently run the loss to -inf.
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{name} must be examples [N, *input_shape], got shape {getattr(x, 'shape', None)}"
        )
    _checks.check_finite(name, x)
    if objective.loss == "cross_entropy":
        _checks.check_unit_interval(name, x)


def _check_divides(batch_size: int) -> None:
    n = jax.device_count()
    if batch_size % n:
        hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise ValueError(
            f"data_parallel=True needs batch_size divisible by the {n} devices{hosts}, "
            f"got batch_size {batch_size}; use a multiple of {n}"
        )


class BatchSource:
    """The batches of `fit`'s steps: `x_train` checked before any side effect (`check`) and
    before the first step (`steps`).

    An array gives step t the batch `batch_at(x_train, t)` (each epoch's order built once); an
    iterable gives its next batch; a callable `batches(start_step)` gives the iterable of the
    step a run resumes at.
    """

    def __init__(self, x_train, *, config: TrainConfig, objective: Objective):
        self.objective, self.parallel = objective, config.data_parallel
        self._array: _ArrayBatches | None = None
        self._given = x_train
        self.example: np.ndarray | None = None  # one training example [1, *input_shape]
        if _is_array(x_train):
            x = np.asarray(x_train)
            _check_batch_data("x_train", x, objective)
            batch_size = x.shape[0] if config.batch_size is None else config.batch_size
            if batch_size > x.shape[0]:
                raise ValueError(
                    f"batch_size {batch_size} exceeds the {x.shape[0]} training examples"
                )
            self._array = _ArrayBatches(x, batch_size, config.seed)
            if self.parallel:
                _check_divides(batch_size)
            self.example = x[:1]
        elif not (callable(x_train) or hasattr(x_train, "__iter__")):
            raise TypeError(
                "x_train must be an array [N, *input_shape], an iterable of batches or a "
                f"callable batches(start_step), got {type(x_train).__name__}"
            )

    def check(self, model, x_test, *, early_stopping: int) -> np.ndarray | None:
        """Checks `x_test` (returned as an array) and, for an array `x_train`, the model."""
        if early_stopping and x_test is None:
            raise ValueError(
                f"early_stopping={early_stopping} needs x_test (held-out data to stop on)"
            )
        if x_test is not None:
            x_test = np.asarray(x_test)
            _check_batch_data("x_test", x_test, self.objective)
        if self.example is not None:
            self._check_against(model, x_test, self.example, "x_train")
        return x_test

    def _check_against(self, model, x_test, example: np.ndarray, what: str) -> None:
        if x_test is not None and x_test.shape[1:] != example.shape[1:]:
            raise ValueError(
                f"x_test examples have shape {x_test.shape[1:]}, {what} {example.shape[1:]}"
            )
        models.check_protocol(model, example.shape[1:], example.dtype)

    def steps(
        self, start: int, stop: int, model, x_test
    ) -> Iterator[tuple[int, np.ndarray | _Rows]]:
        """(step, host batch) from `start` up to `stop`; an iterable's first batch is checked now.

        An iterable that runs out ends the steps early. In data-parallel runs an array's batch
        is a lazy view (`_Rows`): each process gathers only the rows of its own devices.
        """
        if self._array is not None:
            array = self._array
            fetch = array.rows if self.parallel else array
            return ((step, fetch(step)) for step in range(start, stop))
        stream = iter(self._given(start) if callable(self._given) else self._given)
        try:
            first = np.asarray(next(stream))
        except StopIteration:
            raise ValueError("x_train yielded no batches") from None
        _check_batch_data("the first batch of x_train", first, self.objective)
        self._check_against(model, x_test, first, "x_train batches")
        if self.parallel:
            _check_divides(first.shape[0])
        return zip(range(start, stop), itertools.chain([first], stream), strict=False)


class Placement:
    """Where the state and batches live: as given (one device), or with `data_parallel` on a
    1-D mesh over all devices of all hosts, parameters replicated and batches sharded."""

    def __init__(self, data_parallel: bool):
        self.parallel = data_parallel
        self.multiprocess = jax.process_count() > 1
        if data_parallel:
            mesh = Mesh(np.array(jax.devices()), ("data",))
            self.replicated = NamedSharding(mesh, PartitionSpec())
            self.sharded = NamedSharding(mesh, PartitionSpec("data"))

    def state(self, tree):
        """`tree` replicated over the mesh (before any restore: read straight into the layout)."""
        return jax.device_put(tree, self.replicated) if self.parallel else tree

    def batch(self, x) -> jax.Array:
        if not self.parallel:
            return jnp.asarray(x)
        # Called for this process's devices only: each process gathers its own rows.
        return jax.make_array_from_callback(x.shape, self.sharded, lambda idx: x[idx])

    def eval_batch(self, x) -> jax.Array:
        # Every process holds x_test: a multi-process run replicates it over the mesh.
        return jax.device_put(x, self.replicated) if self.multiprocess else jnp.asarray(x)

    def local(self, tree):
        """A replicated multi-process pytree as arrays on this process's first device."""
        if not self.multiprocess:
            return tree
        device = jax.local_devices()[0]

        def local(a):
            if isinstance(a, jax.Array) and not a.is_fully_addressable:
                return jax.device_put(a.addressable_data(0), device)
            return a

        return jax.tree.map(local, tree)

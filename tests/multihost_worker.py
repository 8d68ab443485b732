"""One process of a multi-process `fit` run, for tests/test_multihost.py (started as a script).

usage: multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR NUM_STEPS OUT [SLOW_S]
COORDINATOR "-" runs a single process. SLOW_S > 0 sleeps that long after each step (through a
jitted-step wrapper), so a test can kill a peer mid-run.
"""

import os
import sys

coordinator, num_processes, process_id, workdir, num_steps, out = sys.argv[1:7]
slow_s = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
# Four devices in all, however many processes: 4 local devices for one process, 2 each for two.
local_devices = 4 // int(num_processes)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from aecore import distributed, train  # noqa: E402
from aecore.models import make_autoencoder  # noqa: E402
from aecore.objective import Objective  # noqa: E402

if coordinator != "-":
    distributed.initialize(
        coordinator, int(num_processes), int(process_id), join_timeout_s=30, heartbeat_timeout_s=5
    )

if slow_s > 0:
    import time

    make_step = train.make_train_step

    def slow_make_train_step(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def slowed(*a):
            time.sleep(slow_s)
            return step(*a)

        return slowed

    train.loop.make_train_step = slow_make_train_step  # where fit looks it up

x = np.random.default_rng(0).uniform(0, 1, (512, 8, 8, 1)).astype(np.float32)
config = train.TrainConfig(
    num_steps=int(num_steps),
    batch_size=32,
    learning_rate=1e-2,
    data_parallel=True,
    checkpoint_every=5,
    progress=False,
    log_every=5,
)
objective = Objective(loss="cross_entropy", contractive=0.1, kl=0.1)
model = make_autoencoder((8, 8, 1), hidden=(16,), key=0)
try:
    result = train.fit(model, objective, x, config=config, x_test=x[:64], workdir=workdir)
except distributed.PeerLost as e:
    print(f"aecore: {e}", file=sys.stderr, flush=True)
    os._exit(distributed.EXIT_PEER_LOST)
leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(result.model)]
if jax.process_index() == 0:
    np.savez(out, *leaves, step=result.step, start=result.start_step)
distributed.shutdown()

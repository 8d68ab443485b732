"""The Jacobian benchmark suite on every device kind `jax.devices()` offers (GPU, TPU or CPU).

Run: `python -m benchmarks.accelerator [--quick]`; writes `results/<platform>-<device kind>.json`.
"""

from __future__ import annotations

import sys

from benchmarks.jacobian import main

if __name__ == "__main__":
    main(["--devices", *sys.argv[1:]])

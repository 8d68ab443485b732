"""`python -m aecore ...`: the `aecore` command (`aecore.cli`)."""

import sys

from aecore.cli import cli

sys.exit(cli())

"""Experiments built on aecore: configs, `train_and_evaluate`, and the `aecore` command."""

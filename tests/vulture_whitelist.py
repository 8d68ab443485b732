"""Names vulture (tests/test_dead_code.py) cannot see used: called by users, Python or pytest.

Each line is a name as vulture matches it; `python -m vulture ... --make-whitelist` lists
candidates. Add a name only for a caller outside this repository's code.
"""
# ruff: noqa

__getattr__  # aecore/__init__.py: Python's module __getattr__ (lazy submodules)
train_mode  # aecore.models: the user's counterpart of eval_mode
exc  # __exit__(self, *exc): the context-manager protocol
frame  # signal handlers take (signum, frame)
pytest_ignore_collect  # tests/conftest.py: pytest hooks
pytest_collection_modifyitems
standard_promotion  # tests/test_benchmarks.py: a fixture, used by name
_.no_such_field  # tests/test_cli.py: set to show that an unknown config key raises
on_config  # docs/hooks/site.py: MkDocs calls a hook's event functions by name
on_files
on_page_markdown
on_post_page
on_post_build
on_pre_page

"""The Examples sections (doctests) of the core entry points' docstrings run, and print what they
say: each example starts from its own imports, so it can be copied from the docs as it stands.
"""

import doctest
import importlib

import pytest

# Where each example lives: the module that defines the object, then its name.
DOCUMENTED = [
    ("aecore.jacobian", "frobenius_sq"),
    ("aecore.jacobian", "explain"),
    ("aecore.jacobian.estimate", "frobenius_sq_estimate"),
    ("aecore.objective", "Objective"),
    ("aecore.objective", "objective_terms"),
    ("aecore.models", "make_autoencoder"),
    ("aecore.models", "Autoencoder"),
    ("aecore.train.loop", "fit"),
    ("aecore.train.step", "make_train_step"),
    ("aecore.data", "load_dataset"),
]


@pytest.mark.parametrize("module, name", DOCUMENTED, ids=[n for _, n in DOCUMENTED])
def test_docstring_examples_run(module, name):
    obj = getattr(importlib.import_module(module), name)
    # recurse=False: the object's own docstring (a class's, not its methods'); empty globals, so
    # an example that forgets an import fails here as it would in a reader's session.
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    examples = [ex for t in tests for ex in t.examples]
    assert examples, f"{module}.{name} has no Examples section"
    assert "Examples:" in obj.__doc__.rsplit("\n\n", 1)[-1], "Examples must end the docstring"
    out = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t, out=out.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(out)

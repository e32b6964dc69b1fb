"""The package's floors hold: every rlhfkit import goes down a floor or stays in its folder."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "layers.py"


def test_no_import_goes_sideways_or_up():
    spec = importlib.util.spec_from_file_location("layers", SCRIPT)
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    violations, arrows, _ = layers.check()
    assert violations == []
    assert max(layers.FLOORS) <= 6
    assert arrows  # the scan did read the package

"""The ``rlhfkit`` command line (:mod:`rlhfkit.cli.main`)."""

from rlhfkit.cli.main import main

__all__ = ["main"]

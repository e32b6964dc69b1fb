"""rlhfkit: the whole loop of learning from human feedback for language models."""

__version__ = "0.1.0"

"""Experiments that reproduce a result from a paper end to end (``python -m rlhfkit.experiments.X``).

- :mod:`rlhfkit.experiments.detox`: holistic vs fine-grained rewards for detoxification
  (Wu et al. 2023, Table 1); ``rlhfkit detox``; results in ``docs/detox.md``.
"""

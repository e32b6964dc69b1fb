"""Rewards: the fixed judges, the sources the RL stages read, and per-token shaping.

``gold``: gold scorers, fixed judges that stand in for people (sentiment, toxicity, length,
keywords, weighted sums; torch-free); ``sources``: what a reward source is, the sources built on
a scorer, and combining sources; ``plugins``: a user's Python function (``py:``), a remote
scorer (``http:``) and an environment's rewards (``env``); ``registry``: the ``--reward-model``
prefixes and building sources from a spec; ``shaping``: scores to per-token rewards with the KL
penalty to the reference. Trained reward models, and the sources that read them, are in
:mod:`rlhfkit.models.reward` and :mod:`rlhfkit.models.segment_reward`.
"""

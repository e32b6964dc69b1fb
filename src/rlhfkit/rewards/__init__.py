"""Rewards for the RL stages: where scores come from and how they become per-token rewards.

``sources``: reward models, scorers and per-segment rewards; ``plugins``: a user's Python
function (``py:``), a remote scorer (``http:``) and an environment's rewards (``env``);
``shaping``: scores to per-token rewards with the KL penalty to the reference.
"""

from rlhfkit.rewards import plugins as plugins  # registers the py:, http: and env sources

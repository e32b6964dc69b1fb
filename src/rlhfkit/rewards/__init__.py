"""Rewards for the RL stages: where scores come from and how they become per-token rewards.

``sources``: reward models, scorers and per-segment rewards; ``shaping``: scores to per-token
rewards with the KL penalty to the reference.
"""

"""Test the Adan paper's claims at laptop scale: ``adan-experiments --help``.

Needs the ``experiments`` extra (matplotlib, tqdm, pytorch-optimizer for LAMB,
gymnasium[mujoco] and stable-baselines3 for the RL task).
"""

"""Glue for frameworks that build optimizers from a registry (``adan.integrations.timm``).

Hugging Face ``Trainer``, Lightning and stable-baselines3 take the :class:`adan.Adan` class
as it is: see ``examples/`` and the docs' framework recipes.
"""

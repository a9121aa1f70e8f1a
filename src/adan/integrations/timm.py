"""Register this Adan in timm's optimizer registry.

``timm.optim.create_optimizer_v2(model, "adan")`` builds timm's own Adan (no
``max_grad_norm``, no fused path). After :func:`register`, the name you choose builds this
one, with timm's usual weight-decay/no-decay parameter split::

    import adan.integrations.timm
    adan.integrations.timm.register()                 # name "adanx" by default
    opt = timm.optim.create_optimizer_v2(model, "adanx", lr=5e-3, weight_decay=0.02, max_grad_norm=5.0)

timm splits optimizer names on ``_`` (``lookahead_adam``), so a name must not contain one.
"""

from __future__ import annotations

from typing import Any, Optional

from adan.optimizer import Adan

__all__ = ["register", "DEFAULT_NAME"]

DEFAULT_NAME = "adanx"


def register(name: str = DEFAULT_NAME, *, registry: Optional[Any] = None, overwrite: bool = False) -> str:
    """Register :class:`adan.Adan` under ``name`` in timm's registry (``registry`` defaults to
    timm's default one) and return the name, lower-cased as timm stores it.

    Raises ``ValueError`` for a name with ``_`` or one already taken by another optimizer
    (``overwrite=True`` replaces it, e.g. ``register("adan", overwrite=True)`` makes timm's
    ``"adan"`` build this one), and ``ImportError`` without timm.
    """
    if not name or "_" in name:
        raise ValueError(f"timm optimizer names cannot contain '_' (timm splits them on it): {name!r}")
    from timm.optim import OptimInfo
    from timm.optim._optim_factory import default_registry  # (not re-exported by timm.optim)

    registry = registry if registry is not None else default_registry
    key = name.lower()
    existing = registry._optimizers.get(key)  # timm offers no public "is registered"
    if existing is not None and existing.opt_class is not Adan and not overwrite:
        raise ValueError(f"timm already has an optimizer named {key!r} ({existing.opt_class}); pass overwrite=True to replace it")
    registry.register(
        OptimInfo(
            name=key, opt_class=Adan, has_betas=True, num_betas=3, defaults={"no_prox": False},
            description="Adan (adan package): the reference implementation's maths, fused kernels, global clipping",
        )
    )  # fmt: skip
    return key

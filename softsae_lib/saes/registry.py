"""The architecture registry: ``arch`` name -> SAE class, filled through :func:`register_sae`.

The package's own classes register in ``softsae_lib.saes``; a third party registers its own class
the same way (see the README, "Adding an architecture"), after which :func:`make_sae`, ``load_sae``
and the ``train`` command know it by name. A second class under a name already taken is refused,
so an architecture can never be replaced silently.
"""

from __future__ import annotations

from softsae_lib.saes.base import SAE

ARCHITECTURES: dict[str, type[SAE]] = {}


def register_sae(cls: type[SAE]) -> type[SAE]:
    """Register ``cls`` under ``cls.arch``; usable as a class decorator. Returns ``cls``.

    Raises TypeError for a class that is not an :class:`SAE` subclass or has no ``arch`` name, and
    ValueError when another class already holds that name (registering the same class twice is a no-op).
    """
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise TypeError(f"register_sae needs a subclass of softsae_lib.saes.SAE, got {cls!r}")
    name = getattr(cls, "arch", "")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: set the class attribute `arch` to its registry name")
    taken = ARCHITECTURES.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(f"SAE architecture {name!r} is already registered by "
                         f"{taken.__module__}.{taken.__qualname__}; choose another `arch` for "
                         f"{cls.__module__}.{cls.__qualname__}")
    ARCHITECTURES[name] = cls
    return cls


def make_sae(arch: str, **config) -> SAE:
    """Build an SAE by registry name, e.g. ``make_sae("soft", d_model=768, dict_size=16384, k=64)``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)

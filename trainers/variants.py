"""Generating trainer classes without copy-paste.

A generated class is an ordinary module-level class of the module that generates it (``__module__``,
``__qualname__`` and the module's namespace are set), so nnU-Net's name lookup, ``pickle`` and spawned worker
processes find it like a hand-written one.

For your own variant you do not need this module -- a subclass is three lines::

    from nnunet_losses.trainers import nnUNetTrainer_DSCpp
    class nnUNetTrainer_DSCpp_g3p5(nnUNetTrainer_DSCpp):
        loss_kwargs = {"gamma": 3.5}
"""
from __future__ import annotations

from typing import Dict, MutableMapping, Sequence


def number_tag(value: float) -> str:
    """``2.5 -> "2p5"``, ``2.0 -> "2"``, ``0.25 -> "0p25"`` (a number as it may appear in a class name)."""
    text = f"{float(value):g}"
    if "e" in text or "-" in text:
        raise ValueError(f"cannot write {value!r} in a class name")
    return text.replace(".", "p")


def define_trainer(name: str, bases: Sequence[type], namespace: MutableMapping[str, object], doc: str = "",
                   **attributes) -> type:
    """Create class ``name(*bases)`` with ``attributes`` as a module-level class of the module whose
    ``globals()`` is ``namespace`` (and add it there)."""
    if not name.isidentifier():
        raise ValueError(f"{name!r} is not a valid class name")
    if name in namespace:
        raise ValueError(f"{name} is already defined in {namespace.get('__name__')}")
    body: Dict[str, object] = {"__module__": namespace["__name__"], "__qualname__": name,
                               "__doc__": doc or None, **attributes}
    cls = type(name, tuple(bases), body)
    namespace[name] = cls
    return cls

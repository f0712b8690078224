"""Student families by name: the one map from a family name to its builder.

`apprentice_tf.hardware` profiles and selects students of these families and `recipes/hakd.py`
builds the selected one; both look the builder up here.

* ``"mobilenet"``: `mobilenet_v1` (Howard et al. 2017; knobs ``width_multiplier``,
  ``stage_widths``, ``stage_depths``, ``block_type``, ...);
* ``"densenet"``: `densenet_bc` (DenseNet-BC, Huang et al. 2017; ``depth``, ``growth_rate``,
  ``compression``);
* ``"resnet"``: `cifar_resnet` (He et al. 2016; ``depth``, ``width_multiplier``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apprentice_tf.compat import keras
from apprentice_tf.models.densenet import densenet_bc
from apprentice_tf.models.mobilenet import mobilenet_v1
from apprentice_tf.models.resnet import cifar_resnet

__all__ = ["FAMILIES", "builder", "build"]

_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mobilenet": mobilenet_v1,
    "densenet": densenet_bc,
    "resnet": cifar_resnet,
}
#: Family names `builder` and `build` know.
FAMILIES: tuple[str, ...] = tuple(_BUILDERS)


def builder(family: str) -> Callable[..., keras.Model]:
    """The builder function of `family` (one of `FAMILIES`).

    Raises:
      ValueError: an unknown family.
    """
    if family not in _BUILDERS:
        raise ValueError(f"`family` must be one of {FAMILIES}, received {family!r}.")
    return _BUILDERS[family]


def build(family: str, **kwargs: Any) -> keras.Model:
    """A freshly initialised network of `family`: ``builder(family)(**kwargs)``."""
    return builder(family)(**kwargs)

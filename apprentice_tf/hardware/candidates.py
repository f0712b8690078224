"""Whole student networks of a family (`StudentCandidate`), the candidates `profile` times and
`select_student` chooses from."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apprentice_tf import _checks, _io
from apprentice_tf.compat import keras
from apprentice_tf.models import families
from apprentice_tf.models.families import FAMILIES

__all__ = ["FAMILIES", "StudentCandidate", "student_candidates"]

#: Small default grids: four MobileNet v1 width multipliers (Howard et al.'s alpha), three
#: DenseNet-BC-40 growth rates, four ResNet-20 width multipliers.
_DEFAULT_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "mobilenet": tuple({"width_multiplier": w} for w in (0.25, 0.5, 0.75, 1.0)),
    "densenet": tuple({"depth": 40, "growth_rate": k} for k in (6, 8, 12)),
    "resnet": tuple({"depth": 20, "width_multiplier": w} for w in (0.5, 1.0, 1.5, 2.0)),
}
_ABBREVIATIONS = {
    "width_multiplier": "w",
    "growth_rate": "k",
    "depth": "d",
    "stage_widths": "sw",
    "stage_depths": "sd",
    "stage_strides": "ss",
    "block_type": "bt",
    "groups": "g",
    "depth_multiplier": "dm",
    "compression": "c",
}


@dataclasses.dataclass(frozen=True)
class StudentCandidate:
    """One student network of a family, described by its builder's keyword arguments.

    Built lazily, so `profile` can reuse a stored measurement without building the network.

    Attributes:
      family: one of `FAMILIES` (builders: `models.mobilenet_v1`, `models.densenet_bc`,
        `models.cifar_resnet`).
      name: a short, stable name such as ``mobilenet_w0.5``.
      kwargs: every keyword argument of the builder (num_classes and input_shape included).
    """

    family: str
    name: str
    kwargs: Mapping[str, Any]

    @property
    def builder(self) -> Callable[[], keras.Model]:
        """A no-argument callable that builds the network."""
        return functools.partial(families.builder(self.family), **dict(self.kwargs))

    @property
    def key(self) -> str:
        """Stable key: the family and the JSON of the sorted builder arguments."""
        return f"{self.family}:" + json.dumps(_io.plain(self.kwargs), sort_keys=True)

    def build(self) -> keras.Model:
        """A freshly initialised network."""
        return self.builder()


def _candidate_name(family: str, kwargs: Mapping[str, Any]) -> str:
    parts = [family]
    for argument, value in kwargs.items():
        if argument in ("num_classes", "input_shape"):
            continue
        text = "-".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
        parts.append(f"{_ABBREVIATIONS.get(argument, argument)}{text}")
    return "_".join(parts)


def student_candidates(
    family: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    grid: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, StudentCandidate]:
    """Student networks of one family to `profile` and then `select_student` from.

    Args:
      family: ``"mobilenet"`` (MobileNet v1, Howard et al. 2017; knobs ``width_multiplier``,
        ``stage_widths``, ``stage_depths``, ``block_type``, ...), ``"densenet"`` (DenseNet-BC,
        Huang et al. 2017; ``depth``, ``growth_rate``, ``compression``) or ``"resnet"`` (CIFAR
        ResNet, He et al. 2016; ``depth``, ``width_multiplier``).
      num_classes: logits of every candidate.
      input_shape: (height, width, channels) of every candidate.
      grid: builder keyword arguments, one mapping per candidate (named automatically) or a
        mapping {name: kwargs}. Default: a small grid (MobileNet alpha in 0.25/0.5/0.75/1.0,
        DenseNet-BC-40 with k in 6/8/12, ResNet-20 widths 0.5/1/1.5/2).

    Returns:
      {name: StudentCandidate}, in grid order; pass it to `profile`.

    Raises:
      ValueError: unknown family, an empty grid, or duplicate names.
    """
    if family not in FAMILIES:
        raise _checks.refuse("student_candidates", "family", family, f"one of {FAMILIES}")
    if grid is None:
        grid = _DEFAULT_GRIDS[family]
    if isinstance(grid, Mapping):
        named = [(str(name), kwargs) for name, kwargs in grid.items()]
    elif isinstance(grid, Sequence) and not isinstance(grid, str):
        named = [(None, kwargs) for kwargs in grid]
    else:
        raise _checks.refuse(
            "student_candidates", "grid", grid, "a sequence of kwargs dicts or a dict"
        )
    if not named:
        raise _checks.refuse("student_candidates", "grid", grid, "a non-empty grid")
    candidates: dict[str, StudentCandidate] = {}
    for name, kwargs in named:
        if not isinstance(kwargs, Mapping):
            raise _checks.refuse(
                "student_candidates", "grid entry", kwargs, "a dict of builder kwargs"
            )
        full = {**dict(kwargs), "num_classes": num_classes, "input_shape": tuple(input_shape)}
        name = name or _candidate_name(family, kwargs)
        if name in candidates:
            raise ValueError(f"student_candidates: two grid entries are both named {name!r}.")
        candidates[name] = StudentCandidate(family, name, full)
    return candidates

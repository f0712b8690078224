"""The argument checks every apprentice_tf module shares, with one message style.

Every refusal reads ``"<owner>: `<argument>` must be <what is allowed>, received <value>."``,
optionally followed by how to fix it, and is a ValueError. ``owner`` is the public function or
class the user called (``"quantize_model"``, ``"Distiller"``), so the message points at the
call that was wrong.

This module imports neither TensorFlow nor Keras (`keras_object` takes the expected class as an
argument and recognises Keras 3 objects by their module), so that modules the command line uses
without TensorFlow (`apprentice_tf.litert`) can use it too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = [
    "WHICH_KERAS",
    "choice",
    "integer",
    "keras_object",
    "real",
    "flag",
    "is_integer",
    "refuse",
]

#: What to do about an object from another Keras (appended to `keras_object`'s message).
WHICH_KERAS = (
    "apprentice_tf (like tensorflow-model-optimization) needs Keras 2 objects: build them with "
    "`import tf_keras as keras` (or `from apprentice_tf.compat import keras`), or set "
    "TF_USE_LEGACY_KERAS=1 before importing tensorflow so that `tf.keras` is Keras 2."
)


def refuse(owner: str, argument: str, value: Any, allowed: str, fix: str = "") -> ValueError:
    """The ValueError every check raises, for checks that do not fit the functions below.

    ``"<owner>: `<argument>` must be <allowed>, received <value!r>. <fix>"``
    """
    message = f"{owner}: `{argument}` must be {allowed}, received {value!r}."
    return ValueError(f"{message} {fix}" if fix else message)


def is_integer(value: Any) -> bool:
    """True for an int or NumPy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(
    owner: str,
    argument: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    fix: str = "",
) -> int:
    """`value` as an int, if it is an integer (not a bool) in [minimum, maximum].

    Raises:
      ValueError: "<owner>: `<argument>` must be an integer >= minimum (or in [minimum,
        maximum]), received <value>."
    """
    ok = (
        is_integer(value)
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
    )
    if not ok:
        if minimum is not None and maximum is not None:
            allowed = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            allowed = f"an integer >= {minimum}"
        elif maximum is not None:
            allowed = f"an integer <= {maximum}"
        else:
            allowed = "an integer"
        raise refuse(owner, argument, value, allowed, fix)
    return int(value)


def real(
    owner: str,
    argument: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> float:
    """`value` as a float, if it is a finite real number (not a bool) between `low` and `high`.

    A bound is inclusive unless its ``*_open`` flag is set; None means unbounded.

    Raises:
      ValueError: "<owner>: `<argument>` must be a finite number >= low (or in [low, high),
        (low, high], ...), received <value>."
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"a finite number {'>' if low_open else '>='} {low}"
        elif high is not None:
            allowed = f"a finite number {'<' if high_open else '<='} {high}"
        else:
            allowed = "a finite number"
        raise refuse(owner, argument, value, allowed, fix)
    return float(value)


def choice(owner: str, argument: str, value: Any, choices: Sequence[Any], *, fix: str = "") -> Any:
    """`value`, if it is one of `choices` (a bool is never taken for 0 or 1).

    Raises:
      ValueError: "<owner>: `<argument>` must be one of <choices>, received <value>."
    """
    choices = tuple(choices)
    ok = any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices)
    if not ok:
        raise refuse(owner, argument, value, f"one of {choices}", fix)
    return value


def flag(owner: str, argument: str, value: Any) -> bool:
    """`value`, if it is True or False (NumPy's bool too), as a Python bool.

    Raises:
      ValueError: "<owner>: `<argument>` must be True or False, received <value>."
    """
    if type(value).__name__ not in ("bool", "bool_"):
        raise refuse(owner, argument, value, "True or False")
    return bool(value)


def keras_object(owner: str, argument: str, value: Any, expected: type) -> None:
    """Refuse `value` unless it is an instance of `expected`, a class of apprentice_tf's Keras.

    Args:
      owner: the function or class the user called, for the message.
      argument: the argument's name, for the message.
      value: the object the user passed.
      expected: a class of `apprentice_tf.compat.keras` (e.g. ``keras.Model``).

    Raises:
      ValueError: `value` comes from another Keras (typically Keras 3) or is not an `expected`
        at all; the message names the argument, what was received, and which Keras to use.
    """
    if isinstance(value, expected):
        return
    module = type(value).__module__ or ""
    received = f"{module}.{type(value).__name__}"
    if module.startswith("keras") and not module.startswith("keras.src.legacy"):
        raise ValueError(f"{owner}: `{argument}` is a Keras 3 object ({received}). " + WHICH_KERAS)
    raise ValueError(
        f"{owner}: `{argument}` must be a tf_keras `{expected.__name__}`, received {received}. "
        + WHICH_KERAS
    )

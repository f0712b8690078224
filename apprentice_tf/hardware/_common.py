"""What the modules of `apprentice_tf.hardware` share and nothing else needs: the `quantize`
settings of a latency row and the check that a table was measured on this device.

Argument checks and file writing come from the library's shared `apprentice_tf._checks` and
`apprentice_tf._io`.
"""

from __future__ import annotations

from typing import Any

from apprentice_tf._checks import refuse

#: `quantize` settings of `profile`: float, post-training full-integer int8, or quantization-aware
#: low-precision weights from `apprentice_tf.quantize_model` (with 8-bit activations).
QUANTIZE_MODES: tuple[str | int | None, ...] = (None, "int8", "ternary", 2, 4, 8)

ANY = object()  # "no filter" sentinel (None is a valid quantize value)


def check_quantize(function: str, quantize: Any) -> None:
    """ValueError unless `quantize` is one of `QUANTIZE_MODES`."""
    if isinstance(quantize, bool) or quantize not in QUANTIZE_MODES:
        raise refuse(
            function,
            "quantize",
            quantize,
            f"one of {QUANTIZE_MODES} (None: float; 'int8': full-integer post-training; "
            "'ternary', 2, 4, 8: quantize_model weights with 8-bit activations)",
        )


def quantize_label(quantize: str | int | None) -> str:
    """``float``, ``int8``, ``ternary`` or ``w<bits>a8``: the quantize setting in a row key."""
    if quantize is None:
        return "float"
    if quantize in ("int8", "ternary"):
        return str(quantize)
    return f"w{quantize}a8"


def check_table_device(
    function: str, table: Any, here: str, allow_foreign: bool, argument: str
) -> None:
    """ValueError if `table` (a `LatencyTable`) holds rows of a device other than `here`,
    unless `allow_foreign`."""
    foreign = table.foreign_devices(here)
    if foreign and not allow_foreign:
        described = "; ".join(f"{i}: {table.devices.get(i, {})}" for i in foreign)
        raise ValueError(
            f"{function}: `{argument}` holds measurements from another device ({described}); "
            f"this device is {here!r}. Latency does not transfer between devices: profile here, "
            "or pass allow_foreign=True to use the table anyway."
        )

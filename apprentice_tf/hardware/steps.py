"""Latency steps (Turner et al. 2018, Section 3): channel counts at which a block's measured
latency jumps, and their plot."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from apprentice_tf import _checks, reporting
from apprentice_tf.hardware._common import quantize_label
from apprentice_tf.hardware.blocks import OPS, BlockSpec
from apprentice_tf.hardware.table import LatencyRow, LatencyTable

__all__ = ["Step", "find_steps", "plot_sweep"]


@dataclasses.dataclass(frozen=True)
class Step:
    """A latency step: going from `previous_channels` to `channels` costs `relative_increase`.

    Attributes:
      op, input_size, groups, stride, kernel_size: the block series the step belongs to.
      in_channels: None when the series sweeps in = out channels together.
      device_id, num_threads, quantize, batch_size: the measurement setting.
      previous_channels, channels: consecutive out-channel counts of the series.
      previous_ms, ms: their latencies (the `metric` of `find_steps`).
      relative_increase: ms / previous_ms - 1.
      expected_increase: macs / previous_macs - 1 with ``normalize="macs"``, else 0.
    """

    op: str
    input_size: int
    groups: int
    stride: int
    kernel_size: int
    in_channels: int | None
    device_id: str
    num_threads: int
    quantize: str | int | None
    batch_size: int
    previous_channels: int
    channels: int
    previous_ms: float
    ms: float
    relative_increase: float
    expected_increase: float = 0.0


def _block_series(table: LatencyTable) -> dict[tuple, list[LatencyRow]]:
    series: dict[tuple, list[LatencyRow]] = {}
    for row in table:
        if row.kind != "block":
            continue
        s = row.spec
        tied = s["in_channels"] == s["out_channels"]
        key = (
            row.device_id,
            row.num_threads,
            quantize_label(row.quantize),
            row.batch_size,
            s["op"],
            s["input_size"],
            s.get("groups") or 1,
            s["stride"],
            s["kernel_size"],
            None if tied else s["in_channels"],
        )
        series.setdefault(key, []).append(row)
    for rows in series.values():
        rows.sort(key=lambda r: r.spec["out_channels"])
    return series


def find_steps(
    table: LatencyTable,
    threshold: float = 0.15,
    *,
    metric: str = "median_ms",
    min_delta_ms: float = 0.0,
    above_spread: bool = True,
    normalize: str | None = None,
) -> list[Step]:
    """Channel counts at which a block's latency jumps (Turner et al. 2018, Section 3).

    Within each series of block rows that differ only in channel count (same device, threads,
    quantization, batch, op, input size, groups, stride, kernel; in = out swept together or a
    fixed in_channels), sorted by out_channels c_1 < c_2 < ..., a step at c_i is reported when

        [t(c_i) / t(c_{i-1})] / g_i - 1 > threshold   and   t(c_i) - t(c_{i-1}) > min_delta_ms

    with g_i = 1 (``normalize=None``: any relative jump) or g_i = MACs(c_i) / MACs(c_{i-1})
    (``normalize="macs"``: latency growing faster than the work, `BlockSpec.macs`), and, with
    `above_spread`, t(c_i) - t(c_{i-1}) > max(spread(c_{i-1}), spread(c_i)), so that timing
    noise (p90 - p10 of each row) is not mistaken for a step. The channel counts just below the
    steps are the cheap ones to choose. On a fine channel grid, the smooth quadratic growth of a
    convolution's work also exceeds a small raw threshold: use ``normalize="macs"`` or a
    threshold above the grid's growth there.

    Returns:
      `Step` records ordered by series then channels; ``[s.channels for s in steps]`` gives the
      channel counts where latency jumps.
    """
    if not isinstance(table, LatencyTable):
        raise _checks.refuse("find_steps", "table", table, "a LatencyTable")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise _checks.refuse("find_steps", "threshold", threshold, "a number >= 0")
    if metric not in ("median_ms", "p90_ms", "p10_ms"):
        raise _checks.refuse("find_steps", "metric", metric, "'median_ms', 'p90_ms' or 'p10_ms'")
    if normalize not in (None, "macs"):
        raise _checks.refuse("find_steps", "normalize", normalize, "None or 'macs'")
    steps = []
    for key, rows in _block_series(table).items():
        device, threads, _, batch, op, size, groups, stride, kernel, in_channels = key
        for before, after in zip(rows, rows[1:], strict=False):
            t0, t1 = getattr(before, metric), getattr(after, metric)
            if t0 <= 0:
                continue
            delta = t1 - t0
            noise = max(before.spread_ms, after.spread_ms) if above_spread else 0.0
            growth = 1.0
            if normalize == "macs":
                growth = BlockSpec(**after.spec).macs / BlockSpec(**before.spec).macs
            if (t1 / t0) / growth - 1 > threshold and delta > min_delta_ms and delta > noise:
                steps.append(
                    Step(
                        op=op,
                        input_size=size,
                        groups=groups,
                        stride=stride,
                        kernel_size=kernel,
                        in_channels=in_channels,
                        device_id=device,
                        num_threads=threads,
                        quantize=after.quantize,
                        batch_size=batch,
                        previous_channels=before.spec["out_channels"],
                        channels=after.spec["out_channels"],
                        previous_ms=t0,
                        ms=t1,
                        relative_increase=delta / t0,
                        expected_increase=growth - 1,
                    )
                )
    return steps


def plot_sweep(
    table: LatencyTable,
    path: str | os.PathLike,
    *,
    metric: str = "median_ms",
    threshold: float = 0.15,
    normalize: str | None = None,
) -> Path:
    """Plot latency against channels, one panel per op, one line per input size (PNG).

    Shaded bands are p10-p90; crosses mark the steps `find_steps(table, threshold,
    normalize=normalize)` reports. The drawing is `reporting.plot_latency_sweep`'s.

    Returns:
      The path written.
    """
    series = _block_series(table)
    if not series:
        raise _checks.refuse(
            "plot_sweep", "table", table, "a table with block rows (from layer_sweep)"
        )
    ops = sorted({key[4] for key in series}, key=lambda op: OPS.index(op))
    steps = {
        (
            (s.device_id, s.num_threads, quantize_label(s.quantize), s.batch_size, s.op),
            (s.input_size, s.groups, s.stride, s.kernel_size, s.in_channels),
            s.channels,
        )
        for s in find_steps(table, threshold, metric=metric, normalize=normalize)
    }
    panels: dict[str, list[dict]] = {f"{op} blocks": [] for op in ops}
    for key, rows in sorted(series.items(), key=lambda kv: (-kv[0][5], str(kv[0]))):
        device, threads, label, batch, op, size, groups, stride, _, in_ch = key
        x = [r.spec["out_channels"] for r in rows]
        text = f"{size}x{size}" + (f" g{groups}" if op == "grouped" else "")
        text += f" {label} t{threads}" + (f" s{stride}" if stride != 1 else "")
        text += "" if in_ch is None else f" in{in_ch}"
        panels[f"{op} blocks"].append(
            {
                "label": text,
                "x": x,
                "y": [getattr(r, metric) for r in rows],
                "low": [r.p10_ms for r in rows],
                "high": [r.p90_ms for r in rows],
                "marks": [c for c in x if (key[:5], key[5:], c) in steps],
            }
        )
    return reporting.plot_latency_sweep(
        panels,
        path,
        xlabel="channels (in = out)",
        ylabel=f"{metric.replace('_ms', '')} latency (ms)",
    )

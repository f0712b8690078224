"""Student selection under a latency budget (HAKD, Turner et al. 2018)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from apprentice_tf import _checks, _io
from apprentice_tf.compat import keras
from apprentice_tf.hardware._common import ANY, check_table_device, quantize_label
from apprentice_tf.hardware.candidates import FAMILIES
from apprentice_tf.hardware.device import device_fingerprint
from apprentice_tf.hardware.table import LatencyRow, LatencyTable
from apprentice_tf.models import families

__all__ = ["Selection", "select_student"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The student `select_student` chose, and the measurements that justify it.

    Attributes:
      name: the chosen row's name.
      family: student family (None for plain model rows).
      config: the builder's keyword arguments (the row's `spec`).
      latency_ms: its latency (the `statistic` used for the budget).
      params: its parameter count.
      budget_ms: the budget it was chosen under.
      row: the chosen `LatencyRow`.
      rows: every row considered, fastest first (the fitting ones and those over budget).
      rule: the selection rule in words, for reports.
    """

    name: str
    family: str | None
    config: dict[str, Any]
    latency_ms: float
    params: int
    budget_ms: float
    row: LatencyRow
    rows: tuple[LatencyRow, ...]
    rule: str

    @property
    def builder(self) -> Callable[[], keras.Model]:
        """A no-argument callable building the chosen network (student rows only)."""
        if self.family is None:
            raise ValueError(
                f"Selection {self.name!r} came from a plain model row, which has no builder; "
                "profile `student_candidates(...)` to select buildable students."
            )
        return functools.partial(families.builder(self.family), **self.config)

    def build(self) -> keras.Model:
        """A freshly initialised instance of the chosen student."""
        return self.builder()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the chosen row in full, the others by name and latency)."""
        return _io.plain(
            {
                "name": self.name,
                "family": self.family,
                "config": self.config,
                "latency_ms": self.latency_ms,
                "params": self.params,
                "budget_ms": self.budget_ms,
                "rule": self.rule,
                "row": dataclasses.asdict(self.row),
                "considered": [
                    {
                        "name": r.name,
                        "median_ms": r.median_ms,
                        "p90_ms": r.p90_ms,
                        "params": r.params,
                    }
                    for r in self.rows
                ],
            }
        )


def _one_value(function: str, argument: str, values: set, given: Any) -> Any:
    if given is not ANY and given is not None:
        return given
    if len(values) == 1:
        return next(iter(values))
    raise ValueError(
        f"{function}: the table's candidate rows have several values of `{argument}` "
        f"({sorted(values, key=str)}); pass `{argument}` to choose one."
    )


def select_student(
    table: LatencyTable,
    latency_budget_ms: float,
    family: str | None = "mobilenet",
    candidates: Iterable[str] | None = None,
    capacity: str | Callable[[LatencyRow], float] = "params",
    allow_foreign: bool = False,
    *,
    num_threads: int | None = None,
    quantize: Any = ANY,
    batch_size: int | None = None,
    statistic: str = "median",
    capacity_tolerance: float = 0.05,
    device_id: str | None = None,
) -> Selection:
    """Choose the student with the most capacity whose measured latency fits the budget.

    HAKD (Turner et al. 2018) designs the student from the latency measured on the target. Among
    the whole-network rows of `family` (from `profile(student_candidates(...))`), with latency
    t = `statistic` (median or p90) and capacity C (parameters by default):

    1. fitting = {r : t(r) <= latency_budget_ms};
    2. C* = max over fitting of C(r);
    3. near = {r in fitting : C(r) >= (1 - capacity_tolerance) C*};
    4. the choice is the fastest row of `near` (ties: larger C, then name).

    Step 4 is the tie-break toward configurations just below a latency step: of two
    candidates with nearly the same capacity, the one that did not cross the step is faster.

    Args:
      table: a `LatencyTable` with whole-network rows.
      latency_budget_ms: the budget (> 0).
      family: rows of this family only (None: every student and model row).
      candidates: restrict to these row names.
      capacity: ``"params"``, ``"tflite_bytes"``, or a callable row -> capacity.
      allow_foreign: accept rows of another device (e.g. a table measured on the target board
        and used to choose on a workstation).
      num_threads, quantize, batch_size: which measurement setting to use; needed only when
        the rows hold several.
      statistic: ``"median"`` or ``"p90"`` (a budget for the slow tail).
      capacity_tolerance: relative capacity within which the faster candidate is preferred.
      device_id: which device's rows to use when the table holds several.

    Returns:
      A `Selection`.

    Raises:
      ValueError: budget <= 0, no candidate rows, rows from a foreign device without
        `allow_foreign`, several settings without choosing one, or no candidate within the
        budget (the message names the fastest one and its latency).
    """
    function = "select_student"
    if not isinstance(table, LatencyTable):
        raise _checks.refuse(
            function, "table", table, "a LatencyTable (from profile or LatencyTable.load)"
        )
    if (
        isinstance(latency_budget_ms, bool)
        or not isinstance(latency_budget_ms, int | float)
        or not math.isfinite(latency_budget_ms)
        or latency_budget_ms <= 0
    ):
        raise _checks.refuse(
            function, "latency_budget_ms", latency_budget_ms, "a finite number > 0"
        )
    if family is not None and family not in FAMILIES:
        raise _checks.refuse(function, "family", family, f"one of {FAMILIES} or None")
    if statistic not in ("median", "p90"):
        raise _checks.refuse(function, "statistic", statistic, "'median' or 'p90'")
    if capacity in ("params", "tflite_bytes"):
        capacity_of: Callable[[LatencyRow], float] = lambda r, a=capacity: getattr(r, a)  # noqa: E731
    elif callable(capacity):
        capacity_of = capacity
    else:
        raise _checks.refuse(
            function, "capacity", capacity, "'params', 'tflite_bytes' or a callable"
        )
    if (
        isinstance(capacity_tolerance, bool)
        or not isinstance(capacity_tolerance, int | float)
        or not 0 <= capacity_tolerance < 1
    ):
        raise _checks.refuse(
            function, "capacity_tolerance", capacity_tolerance, "a number in [0, 1)"
        )

    pool = table.filter(
        family=family,
        names=candidates,
        predicate=lambda r: r.kind in (("student",) if family else ("student", "model")),
    )
    if not len(pool):
        raise ValueError(
            f"{function}: `table` has no whole-network rows for family={family!r}"
            + (f" and candidates={sorted(candidates)}" if candidates is not None else "")
            + f" (its rows: {sorted({(r.kind, r.family) for r in table}, key=str)}). Profile "
            "`student_candidates(family, ...)` first."
        )
    here = device_fingerprint()["id"]
    if device_id is None:
        ids = pool.device_ids
        device_id = here if here in ids else (ids[0] if len(ids) == 1 else None)
        if device_id is None:
            raise ValueError(
                f"{function}: the table holds rows of devices {ids}, none of them this one "
                f"({here!r}); pass device_id and allow_foreign=True."
            )
    if device_id != here and not allow_foreign:
        check_table_device(function, pool, here, allow_foreign, "table")
    pool = pool.filter(device_id=device_id)
    num_threads = _one_value(function, "num_threads", {r.num_threads for r in pool}, num_threads)
    labels = {quantize_label(r.quantize): r.quantize for r in pool}
    if quantize is ANY:
        if len(labels) != 1:
            raise ValueError(
                f"{function}: the table's candidate rows have several values of `quantize` "
                f"({sorted(labels.values(), key=str)}); pass `quantize` to choose one."
            )
        quantize = next(iter(labels.values()))
    batch_size = _one_value(function, "batch_size", {r.batch_size for r in pool}, batch_size)
    rows = sorted(
        pool.filter(num_threads=num_threads, quantize=quantize, batch_size=batch_size),
        key=lambda r: (r.latency(statistic), -capacity_of(r), r.name),
    )
    if not rows:
        raise ValueError(
            f"{function}: no candidate rows with num_threads={num_threads}, "
            f"quantize={quantize!r}, batch_size={batch_size}."
        )
    fitting = [r for r in rows if r.latency(statistic) <= latency_budget_ms]
    if not fitting:
        fastest = rows[0]
        raise ValueError(
            f"{function}: no candidate fits latency_budget_ms={latency_budget_ms}: the fastest, "
            f"{fastest.name!r}, takes {fastest.latency(statistic):.4g} ms ({statistic}, "
            f"{num_threads} thread(s), quantize={quantize!r}). Raise the budget or profile "
            "smaller candidates."
        )
    best = max(capacity_of(r) for r in fitting)
    near = [r for r in fitting if capacity_of(r) >= (1 - capacity_tolerance) * best]
    chosen = min(near, key=lambda r: (r.latency(statistic), -capacity_of(r), r.name))
    rule = (
        f"most {capacity if isinstance(capacity, str) else 'capacity'} with {statistic} latency "
        f"<= {latency_budget_ms} ms; among candidates within {capacity_tolerance:.0%} of the "
        "largest fitting capacity, the fastest"
    )
    return Selection(
        name=chosen.name,
        family=chosen.family,
        config=dict(chosen.spec),
        latency_ms=chosen.latency(statistic),
        params=chosen.params,
        budget_ms=float(latency_budget_ms),
        row=chosen,
        rows=tuple(rows),
        rule=rule,
    )

"""The device fingerprint: what makes a latency measurement specific to this machine."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
from typing import Any

from apprentice_tf import _checks, _io

__all__ = ["device_fingerprint"]


@functools.lru_cache(maxsize=1)
def _device_fields() -> tuple[tuple[str, Any], ...]:
    """The fields of `_io.machine_info` that decide a latency: the CPU, its cores, the
    platform and the runtime versions (not the date, the flags or Python)."""
    info = _io.machine_info()
    return (
        ("cpu", info["cpu"] or "unknown"),
        ("cores", info["cores"] or 0),
        ("machine", platform.machine()),
        ("system", platform.system()),
        ("litert", info["ai_edge_litert"] or "not installed"),
        ("tensorflow", info["tensorflow"] or "not installed"),
    )


def device_fingerprint(num_threads: int = 1) -> dict[str, Any]:
    """What makes a latency measurement specific to this machine.

    Returns:
      {"cpu": /proc/cpuinfo "model name" (else `platform.processor()`), "cores":
      `os.cpu_count()`, "machine", "system", "litert": ai-edge-litert version, "tensorflow": the
      converter's version, "threads": `num_threads`, "id": a stable string
      ``<cpu>-<cores>c-<hash>``}. The id hashes every field except "threads" (the thread count
      is part of each row's key instead), so one table can hold several thread counts.
    """
    _checks.integer("device_fingerprint", "num_threads", num_threads, 1)
    fields = dict(_device_fields())
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(fields["cpu"])).strip("-")[:40] or "cpu"
    return {**fields, "threads": int(num_threads), "id": f"{slug}-{fields['cores']}c-{digest}"}

"""The device fingerprint: what makes a latency measurement specific to this machine."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from apprentice_tf import _checks
from apprentice_tf.compat import tf

__all__ = ["device_fingerprint"]


@functools.lru_cache(maxsize=1)
def _device_fields() -> tuple[tuple[str, Any], ...]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")):
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    cpu = value
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown"

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return (
        ("cpu", cpu),
        ("cores", os.cpu_count() or 0),
        ("machine", platform.machine()),
        ("system", platform.system()),
        ("litert", version("ai-edge-litert")),
        ("tensorflow", tf.__version__),
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

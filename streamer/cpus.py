"""How many CPUs this process may use: the container's CPU limit, not the node's cores.

``os.cpu_count()`` is the node's count: on a 64-core GPU node a pod limited to 8 CPUs
would start 64 PyTorch threads and, per stream, as many FFmpeg decode threads, and spend
its quota switching between them (CFS throttling). The budget is the smallest of the
CPUs this process may run on (its affinity) and the cgroup's quota (cgroup v2
``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up, at least 1.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs, or None when there is none (or no cgroup)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


@functools.cache
def cpu_budget() -> int:
    """CPUs this process may use (see the module's note); read once."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = quota_cpus()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)

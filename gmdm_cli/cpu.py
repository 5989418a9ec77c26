"""How many CPU threads to use (torch-free): the CPUs this process may run on, less those others keep busy.

PyTorch starts one intra-op thread per core it sees, which counts neither a container's CPU quota nor other
processes on a shared machine; every thread beyond the free cores then waits its turn, and runs whose threads
synchronise slow down several times over.
"""

from __future__ import annotations

import math
import os
import time

BUSY_SAMPLE = 0.05
"""Seconds over which the other processes' use of this process's CPUs is sampled (``/proc/stat``)."""


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None without a quota."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as file:
            quota, period = file.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as file:
            quota = int(file.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as file:
            period = int(file.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_times(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """``{cpu: (idle, total)}`` jiffies from ``/proc/stat`` (None where there is none)."""
    try:
        with open("/proc/stat") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait, all
    return times or None


def busy_cpus(cpus: list[int], interval: float = BUSY_SAMPLE) -> float | None:
    """How many of ``cpus`` other processes keep busy: their busy fraction summed, sampled over ``interval``
    seconds (None where ``/proc/stat`` is missing)."""
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times(cpus) or {}
    busy = 0.0
    for cpu, (idle, total) in after.items():
        spent = total - before.get(cpu, (idle, total))[1]
        if spent > 0:
            busy += 1 - (idle - before[cpu][0]) / spent
    return busy


def threads_for(budget: int, cpus: int, busy: float | None) -> int:
    """Threads for a budget of ``budget`` CPUs out of the ``cpus`` of the affinity mask, ``busy`` of which other
    processes keep busy: the budget less the busy CPUs when the budget is the whole mask (under a quota, the
    mask's use says nothing about the quota's share), at least one.

    >>> threads_for(2, 2, 0.1), threads_for(2, 2, 1.9), threads_for(8, 8, 3.4), threads_for(2, 64, 40.0)
    (2, 1, 5, 2)
    """
    if busy is None or budget < cpus:
        return budget
    return max(1, min(budget, round(cpus - busy)))


def default_threads() -> int:
    """:func:`threads_for` this process now: its affinity mask, its quota and the CPUs busy at this moment
    (sampled, so that a shell loop of gmdm runs does not count its own previous runs, as a load average would)."""
    cpus = allowed_cpus()
    quota = cpu_quota()
    budget = max(1, min(len(cpus), math.ceil(quota))) if quota else len(cpus)
    return threads_for(budget, len(cpus), busy_cpus(cpus) if budget == len(cpus) else None)

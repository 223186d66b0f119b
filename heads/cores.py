"""The cores this process may use, and how many of them other work leaves idle: LightGBM's
thread count (`heads.registry.LightGBMHead`) is sized by them."""
from __future__ import annotations

import os
import time
from pathlib import Path


def lightgbm_threads(idle: float | None = None) -> int:
    """Threads for LightGBM: the cores this process may use that no other work keeps busy.
    LightGBM's threads wait for each other by spinning, so a thread without a core of its own
    stalls them all: the demo's k-mer grid took 48.5 s with every core of a busy 2-core machine
    and 6.7 s with one. On idle cores they pay at every size (2 cores, 1 thread vs 2: 14,339 x
    5,460 k-mers 8.2 s vs 4.5 s; 640 x 256 features, 2,000 rounds, 21.4 s vs 11.8 s).
    `idle`: idle cores (default: measured, `idle_cores`)."""
    cores = usable_cores()
    idle = idle_cores() if idle is None and cores > 1 else idle
    return 1 if cores == 1 else int(min(cores, max(1, round(idle))))


def usable_cores() -> int:
    """The cores this process may run on, capped by a container's CPU quota (cgroup v2
    cpu.max, or v1 cfs_quota_us / cfs_period_us): a container limited to 2 CPUs on a 64-core
    host still sees 64 cores in its affinity, and 64 spinning threads on a 2-CPU quota stall."""
    cores = len(_affinity())
    try:
        quota, period = (CGROUP_CPU_MAX.read_text().split() + [""])[:2]
    except OSError:
        try:
            quota, period = CGROUP_V1_QUOTA.read_text().strip(), CGROUP_V1_PERIOD.read_text().strip()
        except OSError:
            return cores
    try:
        if quota in ("max", "-1") or int(period) <= 0:
            return cores
        return max(1, min(cores, -(-int(quota) // int(period))))
    except ValueError:
        return cores


def _affinity() -> set[int]:
    """The CPUs this process may run on (all of them where the OS does not say: macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


_IDLE = {"at": -float("inf"), "cores": 0.0}
IDLE_REUSE = 10.0  # seconds a measurement of idle cores stays good (a grid fits many boosters)


def idle_cores(seconds: float = 0.1) -> float:
    """How many of this process's cores sat idle over `seconds` (/proc/stat; this process waits
    meanwhile, so only other work counts), measured at most every IDLE_REUSE seconds. The load
    average would count this process's own BLAS threads as other work. Where /proc/stat is
    unreadable: all of them."""
    now = time.monotonic()
    if now - _IDLE["at"] < IDLE_REUSE:
        return _IDLE["cores"]
    cpus = _affinity()

    def sample():
        times = {}
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    values = [int(v) for v in fields[:8]]
                    times[name] = (values[3] + values[4], sum(values))  # idle + iowait, all
        return times

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError, IndexError):
        after = {}
    idle = 0.0
    for name, (quiet, total) in after.items():
        if name in before and total > before[name][1]:
            idle += (quiet - before[name][0]) / (total - before[name][1])
    _IDLE.update(at=time.monotonic(), cores=idle if after else float(len(cpus)))
    return _IDLE["cores"]

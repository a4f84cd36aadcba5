"""CPU time of processes and of the whole machine, from /proc (Linux)."""
from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (from /proc/stat): minus our processes, the
    foreign load (other work on the machine) during a run."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait (guest time is inside user)
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), for the record of where a benchmark ran."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().split("model name")[1].split("\n")[0].strip(" :\t")
    except (OSError, IndexError):
        return None

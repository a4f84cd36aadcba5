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


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group pgid (a child started in its own session:
    the process and whatever it forked), in seconds."""
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:   # pgrp
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times(cpu: int) -> dict[str, float]:
    """Seconds one CPU spent in each state since boot (the cpuN line of /proc/stat): user, nice, system
    (processes), irq and softirq (the kernel's own work, e.g. loopback packets, charged to no process),
    steal (the hypervisor ran someone else), idle, iowait."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    return {k: int(v) / CLK_TCK for k, v in zip(CPU_FIELDS, line.split()[1:])}
    except (OSError, ValueError):
        pass
    return dict.fromkeys(CPU_FIELDS, 0.0)

"""CPU time and peak memory of a process tree, from /proc (no psutil).

The server's CPU seconds are utime + stime of the ``estkit serve`` process
and every worker it forked (its children); peak RSS is each process's VmHWM.
Voluntary context switches, summed over every thread, count how often a
thread went to sleep: waiting for the network, the disk, a lock, or the GIL
(docs/benchmark.md reads them per request).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcSample", "tree", "cpu_seconds", "thread_cpu", "voluntary_switches", "peak_rss_mb", "sample"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds and voluntary context switches per pid at one moment."""

    cpu: dict[int, float]
    switches: dict[int, int] = field(default_factory=dict)

    def total(self) -> float:
        """All pids' CPU seconds."""
        return sum(self.cpu.values())

    def total_switches(self) -> int:
        """All threads' voluntary context switches."""
        return sum(self.switches.values())


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields after "pid (comm)"


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(int(entry))
            if f is not None:
                parents[int(entry)] = int(f[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            out.append(pid)
            todo += [c for c, p in parents.items() if p == pid]
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, seconds (0 when it is gone)."""
    f = _stat(pid)
    if f is None:
        return 0.0
    return (int(f[11]) + int(f[12])) / _TICK


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each thread of one process, seconds."""
    out = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return out
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        out[tid] = (int(f[11]) + int(f[12])) / _TICK
    return out


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of one process (0 when it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of one process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """VmRSS (resident set size now) of one process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample(root: int | None) -> ProcSample:
    """CPU seconds of every process in ``root``'s tree (empty without a root)."""
    if root is None:
        return ProcSample({})
    pids = tree(root)
    return ProcSample({pid: cpu_seconds(pid) for pid in pids}, {pid: voluntary_switches(pid) for pid in pids})

"""tritonserver's process tree from /proc: its Python stubs by model, their memory and CPU time.

Shared by bench/run.py (peak RSS, CPU time per process) and bench/soak.py (RSS over time, stub PIDs).
"""
from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def stub_pids(pid: int) -> dict[int, str]:
    """The Python-backend stubs under tritonserver `pid`, each with the model it runs."""
    out = {}
    for p in tree(pid)[1:]:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            if b"stub" in cmd[0]:
                # argv[1] is .../<model>/<version>/model.py
                out[p] = Path(cmd[1].decode(errors="replace")).parent.parent.name if len(cmd) > 1 else "?"
        except OSError:
            pass
    return out


def status_kb(pid: int, field: str) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); None once the process is gone."""
    try:
        return int(next(l.split()[1] for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if l.startswith(field)))
    except (OSError, StopIteration):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

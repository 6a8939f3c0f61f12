"""Background samplers: memory of a whole process tree (Ray's daemons and workers included) and GPU use.

Memory is read from Linux's ``/proc`` (no psutil in this environment): for every process descended
from the root, ``Pss`` from ``/proc/PID/smaps_rollup``, the proportional set size, which splits each
shared page (Ray's shared-memory object store, shared libraries) among the processes that map it, so
the sum over processes counts every page once. Where ``smaps_rollup`` cannot be read, ``VmRSS`` from
``/proc/PID/status`` stands in (it counts shared pages once per process, so it over-counts).

Reading ``smaps_rollup`` walks the process's page tables: 12-13 ms of kernel time for a process that
has imported torch, which at a fraction of a second per sample would take a sizeable share of a
2-core machine from the run being measured. So each process's PSS is re-read only when its RSS
(from ``/proc/PID/statm``, a few microseconds) has moved by more than ``RSS_MOVE`` since the last
read, or ``REFRESH_S`` after it; otherwise its last PSS stands. A page that becomes shared after the
last read is then counted at its older, larger share: the figure can only err upwards.

Samples carry wall-clock timestamps (``time.time()``) so that a run's phases, reported by the child
process in the same clock, can be cut out of them afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_MOVE = 0.01  # re-read a process's PSS when its RSS moved by more than 1 % ...
REFRESH_S = 5.0  # ... or this long after the last read


def _children_map() -> dict[int, list[int]]:
    """``parent pid -> child pids`` of every process visible now."""
    children: dict[int, list[int]] = {}
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue  # exited while listing
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])  # the command name may hold spaces and ')'
        children.setdefault(ppid, []).append(int(d.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (a Ray driver's raylet, GCS and workers)."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by the live processes of ``root``'s tree."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root):
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def wait_until_idle(root: int, busy_below: float = 0.1, quiet_for: float = 1.0, timeout: float = 60.0) -> float:
    """Block until ``root``'s process tree has used under ``busy_below`` cores for ``quiet_for`` seconds
    (a Ray cluster whose prestarted workers have finished starting); returns the seconds waited."""
    start = last = quiet_since = time.perf_counter()
    used = tree_cpu_seconds(root)
    while last - start < timeout and last - quiet_since < quiet_for:
        time.sleep(0.25)
        now, was, used = time.perf_counter(), used, tree_cpu_seconds(root)
        if (used - was) / (now - last) >= busy_below:
            quiet_since = now
        last = now
    return time.perf_counter() - start


def _kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def process_memory(pid: int) -> tuple[int, str]:
    """``(bytes, "pss" | "rss")`` of one process; ``(0, "gone")`` if it has exited (or is a zombie,
    which maps no memory)."""
    try:
        return (_kib((PROC / str(pid) / "smaps_rollup").read_text(), "Pss:") or 0) * 1024, "pss"
    except FileNotFoundError:
        return 0, "gone"
    except OSError:
        pass  # not permitted to read smaps: fall back to the resident set
    try:
        rss = _kib((PROC / str(pid) / "status").read_text(), "VmRSS:")
    except OSError:
        return 0, "gone"
    return (rss or 0) * 1024, "rss"


def process_rss(pid: int) -> int | None:
    """Resident bytes of one process from ``/proc/PID/statm`` (cheap); ``None`` if it has exited."""
    try:
        return int((PROC / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def process_name(pid: int) -> str:
    """A short name: Ray's process title (``ray::IDLE``, ``ray::Detector``...) or the program's name."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    if len(argv) > 2 and argv[1] == b"-m":
        return argv[2].decode(errors="replace")
    script = next((a.decode(errors="replace") for a in argv[1:3] if a.endswith(b".py")), "")
    return Path(script or first).name or "?"


@dataclass
class MemorySample:
    """Summed memory of the tree at one moment; ``by_process`` is ``name -> bytes`` (names summed)."""

    time: float
    bytes: int
    processes: int
    by_process: dict[str, int] = field(default_factory=dict)


@dataclass
class TreeMemorySampler:
    """Samples the summed memory of ``root``'s process tree every ``interval`` seconds until stopped."""

    root: int
    interval: float = 0.2
    samples: list[MemorySample] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._last: dict[int, tuple[int, int, str, float]] = {}  # pid -> (rss, memory, kind, when read)

    def _memory(self, pid: int) -> tuple[int, str]:
        """``process_memory(pid)``, re-read only when the process's RSS moved (see the module's notes)."""
        rss, now = process_rss(pid), time.monotonic()
        last = self._last.get(pid)
        if rss is not None and last and abs(rss - last[0]) <= RSS_MOVE * last[0] and now - last[3] < REFRESH_S:
            return last[1], last[2]
        b, kind = process_memory(pid)
        if rss is not None:
            self._last[pid] = (rss, b, kind, now)
        return b, kind

    def _run(self) -> None:
        while not self._stop.is_set():
            by_process: dict[str, int] = {}
            n = 0
            for pid in process_tree(self.root):
                b, kind = self._memory(pid)
                if kind != "gone":
                    name = process_name(pid)
                    by_process[name] = by_process.get(name, 0) + b
                    n += 1
                    self.kinds.add(kind)
            if n:
                self.samples.append(MemorySample(time.time(), sum(by_process.values()), n, by_process))
            self._stop.wait(self.interval)

    def start(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def measure(self) -> str:
        """What the figures are: ``pss``, ``rss`` or ``pss+rss`` when some processes gave only RSS."""
        return "+".join(sorted(self.kinds - {"gone"})) or "none"

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> MemorySample:
        """The sample of largest summed memory taken in ``[start, end]`` (of all samples if none was)."""
        inside = [s for s in self.samples if start <= s.time <= end] or self.samples
        return max(inside, key=lambda s: s.bytes, default=MemorySample(0.0, 0, 0))


@dataclass
class GpuSampler:
    """Samples ``nvidia-smi``'s utilisation of every GPU (percent, averaged over GPUs) while running.

    ``available`` is false without CUDA or ``nvidia-smi``; then nothing is sampled.
    """

    interval: float = 0.2
    samples: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.available = _cuda_available() and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-utilisation", daemon=True)

    def _query(self) -> float | None:
        r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=10)
        values = [float(v) for v in r.stdout.split() if v.strip().replace(".", "", 1).isdigit()]
        return sum(values) / len(values) if r.returncode == 0 and values else None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._query()
            if value is not None:
                self.samples.append((time.time(), value))
            self._stop.wait(self.interval)

    def start(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self, start: float = float("-inf"), end: float = float("inf")) -> dict[str, float] | str:
        """``{"mean": %, "max": %, "samples": n}`` over ``[start, end]``, or why there is none."""
        if not self.available:
            return "n/a (no GPU)"
        inside = [v for t, v in self.samples if start <= t <= end]
        if not inside:
            return "n/a (no sample during the run)"
        return {"mean": sum(inside) / len(inside), "max": max(inside), "samples": len(inside)}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

"""Child processes of the benchmark, and what they cost: CPU seconds per role and peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # The whole session: Celery's pool children must not outlive their parent.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    """Direct children from /proc/<pid>/task/*/children (cheap), or psutil where that file is missing."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            with contextlib.suppress(psutil.Error):
                return [c.pid for c in psutil.Process(pid).children()]
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _stat(pid: int) -> tuple[float, float] | None:
    """(own CPU s, reaped children's CPU s) of one process from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # Fields 14-17 of stat (utime stime cutime cstime) are 11-14 here, after pid and (comm) are cut off.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process, its live descendants and its reaped children."""
    total = 0.0
    for i, p in enumerate(_tree(pid)):
        st = _stat(p)
        if st is not None:
            # Reaped children count for the root only: a descendant's reaped children are its own business
            # until it is reaped itself, and then they are in its parent's cutime already.
            total += st[0] + (st[1] if i == 0 else 0.0)
    return total


def tree_rss(pid: int) -> int:
    """Resident set size in bytes of a process plus its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def system_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (everything but idle and iowait), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    values = [int(x) for x in first[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


class Monitor:
    """Samples RSS of named process trees in a thread, and snapshots their CPU time on demand.

    A role maps to a callable returning its current pids (processes come and go: workers restart between
    phases). Peak RSS is kept per pid and per role (the largest single tree in that role).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.roles: dict[str, Callable[[], list[int]]] = {}
        self.peak_rss: dict[str, int] = {}
        self._retired_cpu: dict[str, float] = {}
        self._last_cpu: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def watch(self, role: str, pids: Callable[[], list[int]]) -> None:
        with self._lock:
            self.roles[role] = pids

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        with self._lock:
            roles = dict(self.roles)
        for role, pids in roles.items():
            for pid in pids():
                rss = tree_rss(pid)
                if rss > self.peak_rss.get(role, 0):
                    self.peak_rss[role] = rss
                # Remember the last CPU reading of every pid, so CPU of a process that exits between two
                # snapshots is not lost from its role's total.
                cpu = tree_cpu_s(pid)
                if cpu:
                    self._last_cpu[(role, pid)] = cpu

    def cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds per role: live processes now, plus the last reading of exited ones."""
        self.sample()
        with self._lock:
            roles = dict(self.roles)
        out: dict[str, float] = {}
        for role in roles:
            live = set(roles[role]())
            total = 0.0
            for (r, pid), cpu in list(self._last_cpu.items()):
                if r != role:
                    continue
                total += tree_cpu_s(pid) if pid in live else cpu
            out[role] = total
        out["bench-client"] = sum(os.times()[:2])
        # Everything the machine did that none of the roles above did: other people's processes on a shared
        # machine, the kernel's own threads. Reported so a noisy run can be recognised as such.
        out["other"] = system_busy_s() - sum(out.values())
        return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in after}


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # servers coming up refuse connections for a while
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r})")

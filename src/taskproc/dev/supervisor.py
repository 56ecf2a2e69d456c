"""Process supervisor behind `taskproc up`.

It is deliberately generic: it runs a list of commands (`ChildSpec`), each in its own OS process, restarts
any that exit with an exponential backoff, and on SIGINT/SIGTERM stops them all (SIGTERM, a grace period,
then SIGKILL). It knows nothing about what the children are.

Long-lived services that are not child commands (the embedded Postgres and Redis, which the caller starts
before `run()` and stops after it) can be handed in as `Restartable` objects: the supervisor polls
`is_running()` and calls `restart()`, with the same backoff, when one has died.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

__all__ = [
    "Backoff",
    "ChildSpec",
    "Restartable",
    "Supervisor",
    "backoff_delay",
    "die_with_parent",
    "taskproc_argv",
]

logger = logging.getLogger("taskproc.dev.supervisor")

_PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    """One supervised command.

    `env` holds variables added to (or overriding) the supervisor's own environment; it does not replace it,
    so a spec never loses PATH, TMPDIR or the TASKPROC_* settings by accident.
    """

    name: str
    argv: list[str]
    env: dict[str, str] | None = None


class Restartable(Protocol):
    """Something the supervisor keeps alive without owning its process (e.g. `EmbeddedPostgres`)."""

    def is_running(self) -> bool: ...

    def restart(self) -> None: ...


def backoff_delay(failures: int, *, initial: float = 0.5, factor: float = 2.0, cap: float = 30.0) -> float:
    """Seconds to wait before restarting after the `failures`-th consecutive failure (1-based).

    1 -> initial, 2 -> initial*factor, ... capped at `cap`; 0 or less -> 0 (nothing has failed yet).
    """
    if failures < 1:
        return 0.0
    # The exponent is clamped so a child that has crashed thousands of times cannot overflow the float.
    return min(cap, initial * factor ** min(failures - 1, 64))


@dataclass(frozen=True)
class Backoff:
    """Restart schedule: `initial` doubling (by `factor`) up to `cap`; a process that stayed up for
    `reset_after` seconds counts as healthy again, so its next failure starts the schedule from the top."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 30.0

    def delay(self, failures: int) -> float:
        return backoff_delay(failures, initial=self.initial, factor=self.factor, cap=self.cap)

    def failures_after_exit(self, previous: int, uptime: float) -> int:
        """Consecutive-failure count after a process that had been up for `uptime` seconds exited."""
        return 1 if uptime >= self.reset_after else previous + 1


def taskproc_argv(*args: str) -> list[str]:
    """Command line that runs `taskproc <args>` with the current interpreter's installation.

    The console script next to `sys.executable` is preferred because `ps` then shows `.../taskproc worker`
    rather than an anonymous `python -m taskproc worker`.
    """
    script = Path(sys.executable).parent / "taskproc"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [sys.executable, "-m", "taskproc", *args]


@functools.cache
def _libc_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes Linux send `sig` to the child when the spawning process dies, or None.

    This keeps servers and workers from outliving a SIGKILLed `taskproc up` or test run. Linux delivers the
    signal when the *thread* that forked exits, not the process, so it is only armed when spawning from the
    main thread (a child started from a short-lived worker thread would otherwise be killed with it).
    The setting survives exec, and CPython runs preexec_fn after switching user, which would clear it.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class _Service:
    name: str
    target: Restartable
    up_since: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class _Wakeup:
    """Self-pipe so signal handlers and `stop()` from other threads can interrupt the loop's wait at once."""

    read_fd: int = -1
    write_fd: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def close(self) -> None:
        with self.lock:
            for fd in (self.read_fd, self.write_fd):
                if fd >= 0:
                    os.close(fd)
            self.read_fd = self.write_fd = -1

    def wake(self) -> None:
        # No lock here: this runs inside signal handlers, and a full pipe already means "wake up".
        fd = self.write_fd
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.write(fd, b"\0")

    def wait(self, timeout: float) -> None:
        if self.read_fd < 0:
            time.sleep(max(0.0, timeout))
            return
        readable, _, _ = select.select([self.read_fd], [], [], max(0.0, timeout))
        if readable:
            with contextlib.suppress(OSError):
                while os.read(self.read_fd, 4096):
                    pass


class Supervisor:
    """Runs `children` (and keeps `services` alive) until `stop()` or SIGINT/SIGTERM.

    `run()` blocks; call it from the main thread to have it install SIGINT/SIGTERM handlers (from another
    thread, stop it with `stop()`). A second signal during shutdown skips the rest of the grace period.
    Restarting a dead service calls its `restart()` synchronously, so the loop pauses while, e.g., Postgres
    comes back; children are still reaped and restarted right after.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        services: Mapping[str, Restartable] | None = None,
        grace: float = 30.0,
        backoff: Backoff | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate child names: {names}")
        self.grace = grace
        self.backoff = backoff or Backoff()
        self.poll_interval = poll_interval
        self._children = [_Child(spec) for spec in children]
        self._services = [_Service(name, target) for name, target in (services or {}).items()]
        self._wakeup = _Wakeup()
        self._stopping = False
        self._escalate = False
        self._stop_reason: str | None = None
        self._started = False

    # -- public API -------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until asked to stop, stop the children, and return 0."""
        if self._started:
            raise RuntimeError("Supervisor.run() can only be called once")
        self._started = True
        self._wakeup.open()
        previous = self._install_signal_handlers()
        try:
            now = time.monotonic()
            for service in self._services:
                service.up_since = now
            for child in self._children:
                if self._stopping:
                    break
                self._spawn(child)
            while not self._stopping:
                self._check_services()
                self._check_children()
                if self._stopping:
                    break
                self._wakeup.wait(self._next_timeout())
            logger.info("stopping (%s)", self._stop_reason or "stop requested")
        finally:
            try:
                self._terminate_children()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                self._wakeup.close()
        return 0

    def stop(self) -> None:
        """Ask `run()` to stop the children and return. Safe from other threads and signal handlers."""
        if self._stopping:
            self._escalate = True
        self._stopping = True
        self._wakeup.wake()

    def pids(self) -> dict[str, int | None]:
        """Current pid of each child (None while it is waiting to be restarted)."""
        return {c.spec.name: (c.proc.pid if c.proc is not None else None) for c in self._children}

    def restart_counts(self) -> dict[str, int]:
        """How many restarts (attempts, including failed ones) each child and service has had."""
        counts = {c.spec.name: c.restarts for c in self._children}
        counts.update({s.name: s.restarts for s in self._services})
        return counts

    # -- internals --------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Callable[[int, FrameType | None], object] | int | None]:
        previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_reason is None:
                self._stop_reason = f"received {signal.Signals(signum).name}"
            self.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**os.environ, **(spec.env or {})}
        child.restart_at = None
        child.started_at = time.monotonic()
        try:
            # Own session: a terminal's Ctrl-C reaches only the supervisor, which then stops the children
            # once, in order (uvicorn treats a second signal as "exit now, skip the graceful drain").
            child.proc = subprocess.Popen(
                spec.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            child.proc = None
            self._schedule_child_restart(child, time.monotonic(), f"could not be started ({exc})")
            return
        logger.info("started %s (pid %d)", spec.name, child.proc.pid)
        # Command lines can carry secrets (e.g. an API key option), so they are only logged at debug level.
        logger.debug("%s argv: %s", spec.name, spec.argv)

    def _schedule_child_restart(self, child: _Child, now: float, what: str) -> None:
        uptime = now - child.started_at
        child.failures = self.backoff.failures_after_exit(child.failures, uptime)
        delay = self.backoff.delay(child.failures)
        child.restart_at = now + delay
        logger.warning(
            "%s %s after %.1fs; restarting in %.1fs (consecutive failure %d)",
            child.spec.name,
            what,
            uptime,
            delay,
            child.failures,
        )

    def _check_children(self) -> None:
        for child in self._children:
            if self._stopping:
                return
            now = time.monotonic()
            if child.proc is not None:
                returncode = child.proc.poll()
                if returncode is None:
                    continue
                pid = child.proc.pid
                child.proc = None
                self._schedule_child_restart(child, now, f"(pid {pid}) {describe_returncode(returncode)}")
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    def _check_services(self) -> None:
        for service in self._services:
            if self._stopping:
                return
            now = time.monotonic()
            if service.restart_at is None:
                if service.target.is_running():
                    continue
                uptime = now - service.up_since
                service.failures = self.backoff.failures_after_exit(service.failures, uptime)
                delay = self.backoff.delay(service.failures)
                service.restart_at = now + delay
                logger.warning(
                    "%s is not running after %.1fs up; restarting in %.1fs (consecutive failure %d)",
                    service.name,
                    uptime,
                    delay,
                    service.failures,
                )
            elif now >= service.restart_at:
                service.restarts += 1
                try:
                    service.target.restart()
                except Exception:
                    service.failures += 1
                    delay = self.backoff.delay(service.failures)
                    service.restart_at = time.monotonic() + delay
                    logger.exception("restarting %s failed; retrying in %.1fs", service.name, delay)
                    continue
                service.restart_at = None
                service.up_since = time.monotonic()
                logger.info("restarted %s", service.name)

    def _next_timeout(self) -> float:
        timeout = self.poll_interval
        now = time.monotonic()
        for due in [c.restart_at for c in self._children] + [s.restart_at for s in self._services]:
            if due is not None:
                timeout = min(timeout, due - now)
        return max(0.0, timeout)

    def _terminate_children(self) -> None:
        running = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            logger.info("sending SIGTERM to %s (pid %d)", child.spec.name, child.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while not self._escalate:
            running = [c for c in running if c.proc is not None and c.proc.poll() is None]
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            self._wakeup.wait(min(0.05, remaining))
        for child in self._children:
            proc = child.proc
            if proc is None:
                continue
            if proc.poll() is None:
                logger.warning(
                    "%s (pid %d) still running %s; sending SIGKILL",
                    child.spec.name,
                    proc.pid,
                    "after a second stop signal" if self._escalate else f"after the {self.grace:g}s grace",
                )
                # Not yet reaped, so the pid (= its process group, see _spawn) cannot have been reused;
                # the whole group goes so that grandchildren do not linger either.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            returncode = proc.wait()
            logger.info("%s (pid %d) %s", child.spec.name, proc.pid, describe_returncode(returncode))
            child.proc = None

"""The supervisor with real (tiny) child processes.

Restart behaviour is checked in-process (the supervisor runs in a thread and is stopped with stop());
signal handling is checked with the supervisor in its own process, as `taskproc up` runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import taskproc.dev.supervisor
from taskproc.dev.supervisor import Backoff, ChildSpec, Supervisor, taskproc_argv

from support import pid_alive, wait_for

PACKAGE_ROOT = str(Path(taskproc.dev.supervisor.__file__).resolve().parents[2])


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# A child that records its pid (atomically: tests poll for the file) once it is ready, and its SIGTERM.
GRACEFUL = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def on_term(signum, frame):
    (out / "term").write_text("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(out / "pid.tmp").write_text(str(os.getpid()))
(out / "pid.tmp").rename(out / "pid")
while True:
    signal.pause()
"""

STUBBORN = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = Path(sys.argv[1])
(out / "pid.tmp").write_text(str(os.getpid()))
(out / "pid.tmp").rename(out / "pid")
while True:
    signal.pause()
"""

DRIVER = """
import json, logging, sys
from taskproc.dev.supervisor import ChildSpec, Supervisor
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
cfg = json.loads(sys.argv[1])
children = [ChildSpec(name, argv) for name, argv in cfg["children"]]
sys.exit(Supervisor(children, grace=cfg["grace"], poll_interval=0.05).run())
"""


class RunningSupervisor:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(supervisor.run()), daemon=True)

    def stop(self) -> int:
        self.supervisor.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "supervisor did not stop"
        return self.result[0]


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Supervisor], RunningSupervisor]]:
    started: list[RunningSupervisor] = []

    def start(supervisor: Supervisor) -> RunningSupervisor:
        running = RunningSupervisor(supervisor)
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `Supervisor(children).run()` in its own process; the process is always reaped."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(children: list[tuple[str, list[str]]], grace: float = 30.0) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])}
        with (tmp_path / "supervisor.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", DRIVER, json.dumps({"children": children, "grace": grace})],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_crashing_child_is_restarted_with_growing_delays(
    tmp_path: Path, run_in_thread: Callable[[Supervisor], RunningSupervisor], caplog: pytest.LogCaptureFixture
) -> None:
    starts = tmp_path / "starts"
    crasher = py(f"""
        import sys, time
        with open({str(starts)!r}, "a") as fh:
            fh.write(f"{{time.monotonic()}}\\n")
        sys.exit(3)
    """)
    backoff = Backoff(initial=0.2, factor=2.0, cap=0.8)
    supervisor = Supervisor(
        [ChildSpec("crasher", crasher), ChildSpec("steady", [*py(GRACEFUL), str(tmp_path)])],
        backoff=backoff,
        poll_interval=0.02,
    )
    caplog.set_level(logging.INFO, logger="taskproc.dev.supervisor")
    running = run_in_thread(supervisor)
    wait_for(lambda: len(lines(starts)) >= 5, what="5 starts of the crashing child")
    steady_pid = supervisor.pids()["steady"]
    assert running.stop() == 0

    times = [float(t) for t in lines(starts)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Each gap is the backoff delay plus process start-up; the delays are 0.2, 0.4, 0.8, 0.8 (cap).
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=False):
        assert gap >= delay - 0.02, (gaps, delay)
    assert gaps[2] > gaps[0] + 0.4
    assert supervisor.restart_counts()["crasher"] >= 4
    assert supervisor.restart_counts()["steady"] == 0
    assert "crasher (pid" in caplog.text
    assert "exited with code 3" in caplog.text
    assert "restarting in 0.4s" in caplog.text
    # stop() sent SIGTERM to the healthy child, which ran its handler.
    assert (tmp_path / "term").read_text() == "TERM"
    assert steady_pid is not None
    assert not pid_alive(steady_pid)


def test_child_killed_by_a_signal_is_restarted(
    tmp_path: Path, run_in_thread: Callable[[Supervisor], RunningSupervisor], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskproc.dev.supervisor")
    supervisor = Supervisor([ChildSpec("victim", [*py(GRACEFUL), str(tmp_path)])], poll_interval=0.02)
    running = run_in_thread(supervisor)
    wait_for(lambda: (tmp_path / "pid").exists(), what="child start")
    first = int((tmp_path / "pid").read_text())
    (tmp_path / "pid").unlink()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (tmp_path / "pid").exists(), what="child restart")
    assert int((tmp_path / "pid").read_text()) != first
    assert running.stop() == 0
    assert "was killed by SIGKILL" in caplog.text


def test_child_env_is_added_to_the_supervisor_environment(
    tmp_path: Path, run_in_thread: Callable[[Supervisor], RunningSupervisor]
) -> None:
    out = tmp_path / "env.json"
    code = py(f"""
        import json, os, signal
        with open({str(out) + ".tmp"!r}, "w") as fh:
            json.dump({{"x": os.environ.get("TASKPROC_X"), "path": os.environ.get("PATH")}}, fh)
        os.rename({str(out) + ".tmp"!r}, {str(out)!r})
        signal.pause()
    """)
    running = run_in_thread(Supervisor([ChildSpec("envy", code, env={"TASKPROC_X": "1"})]))
    wait_for(out.exists, what="child env dump")
    assert running.stop() == 0
    seen = json.loads(out.read_text())
    assert seen == {"x": "1", "path": os.environ.get("PATH")}


class FlakyService:
    """A Restartable whose first restart attempt fails."""

    def __init__(self) -> None:
        self.running = True
        self.restart_calls = 0

    def is_running(self) -> bool:
        return self.running

    def restart(self) -> None:
        self.restart_calls += 1
        if self.restart_calls == 1:
            raise RuntimeError("port still in use")
        self.running = True


def test_dead_service_is_restarted_and_a_failed_restart_is_retried(
    run_in_thread: Callable[[Supervisor], RunningSupervisor], caplog: pytest.LogCaptureFixture
) -> None:
    service = FlakyService()
    supervisor = Supervisor(
        [], services={"postgres": service}, backoff=Backoff(initial=0.05, cap=0.2), poll_interval=0.02
    )
    running = run_in_thread(supervisor)
    service.running = False
    wait_for(lambda: service.running, what="service restart")
    assert running.stop() == 0
    assert service.restart_calls == 2
    assert "restarting postgres failed" in caplog.text
    assert supervisor.restart_counts() == {"postgres": 2}


def test_unstartable_child_is_retried_not_fatal(
    tmp_path: Path, run_in_thread: Callable[[Supervisor], RunningSupervisor], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(
        [ChildSpec("ghost", [str(tmp_path / "missing-binary")])],
        backoff=Backoff(initial=0.05, cap=0.1),
        poll_interval=0.02,
    )
    running = run_in_thread(supervisor)
    wait_for(lambda: supervisor.restart_counts()["ghost"] >= 2, what="retries")
    assert running.stop() == 0
    assert "could not be started" in caplog.text


def test_sigterm_stops_children_gracefully_and_exits_zero(
    tmp_path: Path, driver: Callable[..., subprocess.Popen[bytes]]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sup = driver([("api", [*py(GRACEFUL), str(a)]), ("worker", [*py(GRACEFUL), str(b)])])
    wait_for(lambda: (a / "pid").exists() and (b / "pid").exists(), what="children start")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0
    assert (a / "term").read_text() == "TERM"
    assert (b / "term").read_text() == "TERM"
    for d in (a, b):
        assert not pid_alive(int((d / "pid").read_text()))


def test_sigint_is_a_clean_stop_too(tmp_path: Path, driver: Callable[..., subprocess.Popen[bytes]]) -> None:
    sup = driver([("api", [*py(GRACEFUL), str(tmp_path)])])
    wait_for(lambda: (tmp_path / "pid").exists(), what="child start")
    sup.send_signal(signal.SIGINT)
    assert sup.wait(15) == 0
    assert (tmp_path / "term").read_text() == "TERM"


def test_child_ignoring_sigterm_is_killed_after_the_grace(
    tmp_path: Path, driver: Callable[..., subprocess.Popen[bytes]]
) -> None:
    sup = driver([("stubborn", [*py(STUBBORN), str(tmp_path)])], grace=1.0)
    wait_for(lambda: (tmp_path / "pid").exists(), what="child start")
    pid = int((tmp_path / "pid").read_text())
    started = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10, elapsed
    assert not pid_alive(pid)
    log = (tmp_path / "supervisor.log").read_text()
    assert "sending SIGKILL" in log
    assert "was killed by SIGKILL" in log


def test_second_signal_skips_the_grace(tmp_path: Path, driver: Callable[..., subprocess.Popen[bytes]]) -> None:
    sup = driver([("stubborn", [*py(STUBBORN), str(tmp_path)])], grace=60.0)
    wait_for(lambda: (tmp_path / "pid").exists(), what="child start")
    sup.send_signal(signal.SIGTERM)
    wait_for(lambda: "sending SIGTERM to stubborn" in (tmp_path / "supervisor.log").read_text())
    sup.send_signal(signal.SIGINT)
    assert sup.wait(15) == 0
    assert "after a second stop signal" in (tmp_path / "supervisor.log").read_text()


def test_children_get_sigterm_when_the_supervisor_is_sigkilled(
    tmp_path: Path, driver: Callable[..., subprocess.Popen[bytes]]
) -> None:
    sup = driver([("api", [*py(GRACEFUL), str(tmp_path)])])
    wait_for(lambda: (tmp_path / "pid").exists(), what="child start")
    sup.kill()
    sup.wait()
    wait_for(lambda: (tmp_path / "term").exists(), what="child to get SIGTERM")
    wait_for(lambda: not pid_alive(int((tmp_path / "pid").read_text())), what="child exit")


def test_taskproc_argv_prefers_the_console_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_python = tmp_path / "bin" / "python"
    fake_python.parent.mkdir()
    monkeypatch.setattr(sys, "executable", str(fake_python))
    assert taskproc_argv("worker") == [str(fake_python), "-m", "taskproc", "worker"]
    script = tmp_path / "bin" / "taskproc"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert taskproc_argv("api", "--port", "8000") == [str(script), "api", "--port", "8000"]


def test_duplicate_child_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor([ChildSpec("a", ["true"]), ChildSpec("a", ["true"])])

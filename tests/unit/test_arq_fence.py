"""The installed arq still has every non-public member taskproc/worker/arq_fence.py relies on, with the shape
and behaviour it relies on. A failure names the member: read arq's changelog for it and adapt the fence (then
widen the pin in pyproject.toml), or keep the pin."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

from arq.connections import RedisSettings
from arq.worker import Worker, func

from taskproc.worker.arq_fence import PRIVATE_SURFACE, FencedWorker, redis_settings

ARQ = f"arq {version('arq')}"


def params(fn: object) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]  # type: ignore[arg-type]


def source(fn: object) -> str:
    return inspect.getsource(fn)  # type: ignore[arg-type]


async def _noop(ctx: dict[str, object]) -> None:
    return None


def test_the_surface_list_is_complete() -> None:
    """Every member the fence overrides is in PRIVATE_SURFACE (so this module checks it)."""
    overridden = {f"Worker.{n}" for n in vars(FencedWorker) if hasattr(Worker, n) and not n.startswith("__")}
    assert overridden <= set(PRIVATE_SURFACE), f"not listed in PRIVATE_SURFACE: {overridden - set(PRIVATE_SURFACE)}"


def test_methods_keep_their_shape() -> None:
    expected = {
        "_poll_iteration": ([], True),
        "heart_beat": ([], True),
        "close": ([], True),
        "main": ([], True),
        "handle_sig": (["signum"], False),
        "handle_sig_wait_for_completion": (["signum"], False),
        "_wait_for_tasks_to_complete": (["signum"], True),
    }
    for name, (want, is_async) in expected.items():
        assert f"Worker.{name}" in PRIVATE_SURFACE, name
        member = getattr(Worker, name, None)
        assert member is not None, f"{ARQ}: Worker.{name} is gone (arq_fence.py relies on it)"
        assert params(member) == want, f"{ARQ}: Worker.{name}{inspect.signature(member)} changed; fence expects {want}"
        assert inspect.iscoroutinefunction(member) == is_async, (
            f"{ARQ}: Worker.{name} is no longer {'async' if is_async else 'sync'}"
        )


async def test_attributes_exist_with_their_types() -> None:
    # Constructing a Worker does no I/O (the pool is created in main()); no signal handlers in a test.
    worker = Worker(functions=[func(_noop, name="noop")], handle_signals=False)
    assert isinstance(getattr(worker, "tasks", None), dict), f"{ARQ}: Worker.tasks is no longer a dict"
    assert getattr(worker, "allow_pick_jobs", None) is True, f"{ARQ}: Worker.allow_pick_jobs is gone or not True"


def test_behaviour_the_fence_relies_on() -> None:
    assert "self._poll_iteration()" in source(Worker.main), f"{ARQ}: Worker.main no longer calls _poll_iteration"
    assert "self.tasks" in source(Worker._wait_for_tasks_to_complete), (
        f"{ARQ}: Worker._wait_for_tasks_to_complete no longer cancels self.tasks"
    )
    assert "self.tasks" in source(Worker.handle_sig), f"{ARQ}: Worker.handle_sig no longer cancels self.tasks"
    assert "self.allow_pick_jobs = False" in source(Worker.handle_sig_wait_for_completion), (
        f"{ARQ}: Worker.handle_sig_wait_for_completion no longer sets allow_pick_jobs"
    )
    init = source(Worker.__init__)
    for handler in ("self.handle_sig_wait_for_completion", "self.handle_sig"):
        assert handler in init, f"{ARQ}: Worker.__init__ no longer installs {handler} (the fence wraps it)"


def test_constructor_takes_what_build_worker_passes() -> None:
    accepted = set(params(Worker.__init__))
    passed = {"functions", "redis_settings", "poll_delay", "job_completion_wait", "on_startup", "on_shutdown", "ctx"}
    assert passed <= accepted, f"{ARQ}: Worker() no longer takes {passed - accepted}"
    # Defaults build_worker relies on by not passing them.
    defaults = {k: v.default for k, v in inspect.signature(Worker.__init__).parameters.items()}
    for name, value in {"handle_signals": True, "burst": False, "queue_name": "arq:queue"}.items():
        assert defaults.get(name) == value, (
            f"{ARQ}: Worker(..., {name}=) default is {defaults.get(name)!r}, not {value!r}"
        )


def test_redis_settings_fields() -> None:
    for field in ("conn_timeout", "conn_retries", "conn_retry_delay"):
        assert f"RedisSettings.{field}" in PRIVATE_SURFACE
        assert hasattr(RedisSettings, field), f"{ARQ}: RedisSettings.{field} is gone"
    s = redis_settings("redis://:pw@example:6380/3")
    assert (s.host, s.port, s.database, s.password) == ("example", 6380, 3, "pw")
    assert (s.conn_timeout, s.conn_retries, s.conn_retry_delay) == (2, 30, 1)


async def test_fenced_worker_runs_jobs_where_arqs_shutdown_finds_them() -> None:
    """start_job puts the task in arq's `tasks`, it leaves once done, and close() survives cancelled jobs."""

    class Probe(FencedWorker):
        async def iterate(self) -> None:
            raise AssertionError("not run here")

    w = Probe(functions=[func(_noop, name="noop")], handle_signals=False)
    release = asyncio.Event()

    async def job() -> None:
        await release.wait()

    t = w.start_job("a.1", job())
    assert w.tasks == {"a.1": t} and w.running_jobs() == 1 and w.job("a.1") is t
    # Done callbacks run in the order they were added: once ours has run, the fence's (added by start_job) has.
    after_fence = asyncio.Event()
    t.add_done_callback(lambda _: after_fence.set())
    release.set()
    await t
    await after_fence.wait()
    assert w.tasks == {} and w.job("a.1") is None
    stuck = w.start_job("b.1", asyncio.Event().wait())  # type: ignore[arg-type]
    stuck.cancel()
    await w.close()  # no pool was ever made: arq's close returns early, ours must not raise
    assert w.tasks == {}


def test_our_redis_keys_are_still_arqs() -> None:
    """queue.py names arq's keys itself (so the API does not import arq); they must stay the ones arq uses."""
    from arq import constants

    from taskproc import queue

    assert constants.default_queue_name == queue.QUEUE_KEY, f"{ARQ}: default queue is {constants.default_queue_name}"
    assert constants.abort_jobs_ss == queue.ABORT_KEY, f"{ARQ}: abort set is {constants.abort_jobs_ss}"

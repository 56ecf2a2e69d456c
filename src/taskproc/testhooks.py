"""Named pause points, so that a race between two statements can be tested deterministically.

Code under test marks the gap between two steps with `await testhooks.point("name")`. Off (the default),
that costs a dict lookup. A test turns a point on in one of two ways:

- in process: `with testhooks.installed("name", callback):` runs `await callback()` at the point, so the
  test can run the competing operation right there;
- across processes: the process under test is started with `TASKPROC_TEST_PAUSE_DIR=<dir>`; the test creates
  `<dir>/<name>.armed`; the process reaching the point writes `<dir>/<name>.reached` and waits until the test
  creates `<dir>/<name>.release` (`tests/support.PausePoint` does the test's side).

Point names used in the code are listed where they are used; grep for `testhooks.point(`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_callbacks: dict[str, Callable[[], Awaitable[None]]] = {}
_env_dir = os.environ.get("TASKPROC_TEST_PAUSE_DIR")
_pause_dir: Path | None = Path(_env_dir) if _env_dir else None
# How often a paused process looks for its release file: the test, not this interval, decides how long it waits.
_POLL_S = 0.01


async def point(name: str) -> None:
    """A place where a test may pause this coroutine; a no-op unless a test turned `name` on."""
    if not _callbacks and _pause_dir is None:
        return
    callback = _callbacks.get(name)
    if callback is not None:
        await callback()
    if _pause_dir is not None and (_pause_dir / f"{name}.armed").exists():
        (_pause_dir / f"{name}.reached").touch()
        release = _pause_dir / f"{name}.release"
        # Another process creates the file: there is no event to wait on.
        while not release.exists():  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)


@contextmanager
def installed(name: str, callback: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """Run `callback` whenever a coroutine of this process reaches the point `name`, while the block runs."""
    if name in _callbacks:
        raise RuntimeError(f"pause point {name!r} already has a callback")
    _callbacks[name] = callback
    try:
        yield
    finally:
        del _callbacks[name]

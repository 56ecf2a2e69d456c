"""Pause points: off by default, run the installed callback exactly where the code marks the gap."""

from __future__ import annotations

import pytest

from taskproc import testhooks


async def test_a_point_without_callback_does_nothing() -> None:
    await testhooks.point("nothing.here")


async def test_an_installed_callback_runs_at_its_point_only_while_installed() -> None:
    seen: list[str] = []

    async def competing() -> None:
        seen.append("competing step")

    with testhooks.installed("demo.between", competing):
        seen.append("first step")
        await testhooks.point("demo.between")
        await testhooks.point("demo.other")
        seen.append("second step")
    await testhooks.point("demo.between")
    assert seen == ["first step", "competing step", "second step"]


def test_one_callback_per_point() -> None:
    async def cb() -> None:
        return None

    with testhooks.installed("demo.once", cb), pytest.raises(RuntimeError), testhooks.installed("demo.once", cb):
        pass

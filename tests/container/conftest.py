"""The image built from the working tree (scripts/image.sh with podman; podman's layer cache makes a rebuild
of unchanged sources a few seconds), and a clean database + Redis db per test for the containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Target, build_image
from support import Servers


@pytest.fixture(scope="session")
def image() -> str:
    return build_image()


@pytest.fixture
def target(servers: Servers) -> Iterator[Target]:
    t = Target(servers)
    try:
        yield t
    finally:
        t.close()

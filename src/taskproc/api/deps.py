"""FastAPI dependencies, as Annotated aliases."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from taskproc.config import Settings
from taskproc.errors import UnauthorizedError
from taskproc.tasks.registry import TaskRegistry


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def get_registry(request: Request) -> TaskRegistry:
    registry: TaskRegistry = request.app.state.registry
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[Redis, Depends(get_redis)]
RegistryDep = Annotated[TaskRegistry, Depends(get_registry)]


def check_bearer(authorization: str, keys: list[bytes]) -> None:
    """UnauthorizedError unless `authorization` is `Bearer <one of keys>` (no keys configured: always fine)."""
    if not keys:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <api key>'")
    presented = token.strip().encode()
    # Compare against every key, without stopping early, so timing says nothing about which keys exist.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthorizedError("invalid API key")


async def require_api_key(request: Request) -> None:
    """When API keys are configured, every /api/v1 call needs `Authorization: Bearer <key>`.

    ApiKeyMiddleware already answers 401 before the body is read; this dependency keeps routes safe even if
    they are mounted without it.
    """
    check_bearer(request.headers.get("authorization", ""), request.app.state.api_keys)


AuthDep = Depends(require_api_key)

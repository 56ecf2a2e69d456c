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


async def require_api_key(request: Request) -> None:
    """When API keys are configured, every /api/v1 call needs `Authorization: Bearer <key>`."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <api key>'")
    presented = token.strip().encode()
    # Compare against every key, without stopping early, so timing says nothing about which keys exist.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise UnauthorizedError("invalid API key")


AuthDep = Depends(require_api_key)

"""Server-Sent Events: GET /api/v1/events (issue 7 fills this in)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["events"])

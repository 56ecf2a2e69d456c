"""With API keys on, a caller without a valid key gets 401 before the body is read, whatever the body."""

from __future__ import annotations

from inprocess import InProcessFactory


async def test_unauthenticated_requests_are_refused_before_the_body_is_read(
    inprocess_factory: InProcessFactory,
) -> None:
    async with inprocess_factory(workers=0, env={"TASKPROC_API_KEYS": "right-key"}) as stack:
        cases = [
            {"json": {}},  # invalid task
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            {"content": b"x=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            {"content": b"[" * 2_000_000, "headers": {"Content-Type": "application/json"}},  # over the limit
        ]
        for kwargs in cases:
            r = await stack.client.post("/api/v1/tasks", **kwargs)  # type: ignore[arg-type]
            assert r.status_code == 401, (kwargs.get("headers"), r.status_code, r.text[:200])
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["detail"].startswith("missing bearer token")
        wrong = await stack.client.post("/api/v1/tasks", json={}, headers={"Authorization": "Bearer wrong-key"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "invalid API key"
        right = await stack.client.post("/api/v1/tasks", json={}, headers={"Authorization": "Bearer right-key"})
        assert right.status_code == 422, "with the key, the body is validated as usual"
        assert (await stack.client.get("/healthz")).status_code == 200
        assert (await stack.client.get("/")).status_code == 200, "the dashboard page itself stays public"

"""The worker's pod-deletion-cost: tell Kubernetes how busy this pod is, so a scale-down removes idle pods first.

The ReplicaSet controller deletes the pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first.
The worker sets it on its own pod to the number of tasks it is running, through the in-cluster API with its
service account (the chart's Role allows `get` and `patch` on pods). Best effort: a failure is logged and
retried at the next change, it never blocks or stops the worker, and updates are rate-limited (the annotation is
a hint, and every patch is a write to the API server).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable

import httpx

from taskproc.config import Settings
from taskproc.maintenance import every

log = logging.getLogger("taskproc.worker")

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
PATCH_CONTENT_TYPE = "application/merge-patch+json"


class PodDeletionCost:
    """Keeps the annotation equal to `busy()` (checked every `interval_s`, patched only when it changed)."""

    def __init__(self, settings: Settings, busy: Callable[[], int], *, interval_s: float = 2.0) -> None:
        if not settings.pod_name or not settings.pod_namespace:
            raise ValueError("TASKPROC_POD_DELETION_COST needs TASKPROC_POD_NAME and TASKPROC_POD_NAMESPACE")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ValueError("TASKPROC_POD_DELETION_COST needs the in-cluster API (KUBERNETES_SERVICE_HOST)")
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        self.url = f"https://{host}:{port}/api/v1/namespaces/{settings.pod_namespace}/pods/{settings.pod_name}"
        self._token_path = settings.serviceaccount_dir / "token"
        self._ca_path = settings.serviceaccount_dir / "ca.crt"
        self._busy = busy
        self._interval_s = interval_s
        self.sent: int | None = None
        self._failed_at = 0.0

    async def patch(self, cost: int) -> None:
        """One merge patch of the pod's annotations (raises on failure)."""
        # Read every time: the kubelet rotates projected service-account tokens.
        token = self._token_path.read_text().strip()
        verify = ssl.create_default_context(cafile=str(self._ca_path))
        async with httpx.AsyncClient(verify=verify, timeout=5.0) as client:
            response = await client.patch(
                self.url,
                content=f'{{"metadata":{{"annotations":{{"{ANNOTATION}":"{int(cost)}"}}}}}}',
                headers={"Authorization": f"Bearer {token}", "Content-Type": PATCH_CONTENT_TYPE},
            )
            response.raise_for_status()

    async def sync(self) -> bool:
        """Patch if the busy count changed since the last successful patch; True if it patched."""
        cost = self._busy()
        if cost == self.sent:
            return False
        try:
            await self.patch(cost)
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            # Logged at most once a minute: without RBAC or an API server this fails at every change.
            if time.monotonic() - self._failed_at > 60:
                self._failed_at = time.monotonic()
                log.warning("could not set the pod-deletion-cost: %s", exc)
            return False
        self.sent = cost
        return True

    async def run(self) -> None:
        """Forever, as a background duty of the worker: a failed patch is tried again at the next look."""
        await every(self._interval_s, self.sync, "pod-deletion-cost", jitter=0.0)

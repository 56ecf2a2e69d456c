"""`taskproc migrate`: alembic upgrade head, waiting for the database to come up first; and
`taskproc migrate --wait-for-schema`, which only waits until someone else has done so (init containers)."""

from __future__ import annotations

import logging
from pathlib import Path

import tenacity
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from taskproc import retry, store
from taskproc.config import Settings

log = logging.getLogger("taskproc.migrate")


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    # ConfigParser interpolation would choke on a '%' in the password.
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


def wait_for_database(settings: Settings, timeout_s: float) -> None:
    """Return once Postgres accepts a connection; its last OperationalError after `timeout_s` seconds."""
    for attempt in retry.retrying_sync(
        "database not reachable yet", on=OperationalError, give_up_after_s=timeout_s, logger=log
    ):
        with attempt:
            engine = create_engine(settings.sqlalchemy_url, connect_args={"connect_timeout": 3})
            try:
                with engine.connect() as conn:
                    store.ping_sync(conn)
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
    last: list[set[str] | None] = []

    def report(state: tenacity.RetryCallState) -> None:
        current = state.outcome.result() if state.outcome is not None else None
        if last and current == last[0]:
            return  # said once per change, not once a second
        last[:] = [current]
        if current is None:
            log.warning("database not reachable yet; waiting")
        elif current != heads:
            log.warning(
                "database schema is at %s, waiting for %s",
                ",".join(sorted(current)) or "nothing",
                ",".join(sorted(heads)),
            )

    # Polled at a fixed interval (a migration Job is expected soon, there is nothing to back off from); the
    # last look is at most poll_s after the deadline.
    poller = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda current: current != heads),
        wait=tenacity.wait_fixed(poll_s),
        stop=tenacity.stop_after_delay(timeout_s),
        after=report,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome is not None else None,
    )
    current = poller(current_revisions, settings)
    if current != heads:
        raise SchemaNotReadyError(
            f"database schema is at {','.join(sorted(current or ())) or 'nothing'}"
            f"{' (database unreachable)' if current is None else ''}, not {','.join(sorted(heads))},"
            f" after {timeout_s:g}s: has the migration Job (taskproc migrate) run?"
        )
    log.info("database schema is at %s", ",".join(sorted(heads)))

"""`taskproc migrate`: alembic upgrade head, waiting for the database to come up first."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

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
                conn.execute(text("SELECT 1"))
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

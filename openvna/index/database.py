"""Engine creation and schema migration for the index.

SQLite runs in WAL mode with ``synchronous=FULL`` by default so that a committed index
row survives a killed process and a power cut; PostgreSQL needs nothing special. The
schema is always brought to the newest Alembic revision at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_index_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """Create the engine for ``url`` with the pragmas a durable archive needs."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=8,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            # LIKE answers wildcard matching, which is case-sensitive except for PN
            # (PS3.4 C.2.2.2.4); PN matches on upper-cased columns with upper-cased patterns.
            cursor.execute("PRAGMA case_sensitive_like=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection_engine"] = engine
    return config


def upgrade_schema(engine: Engine) -> None:
    """Apply every pending migration (idempotent)."""
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

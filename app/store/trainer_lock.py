"""The trainer lock: at most one process of a deployment runs training at a time."""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, func, literal, select

log = logging.getLogger(__name__)

TRAINER_LOCK_CLASS = 0x1E0E  # first key of the PostgreSQL advisory lock that elects the trainer


class TrainerLock:
    """PostgreSQL: a session-level advisory lock (keyed per schema) held on a connection of its
    own for as long as this process trains. SQLite: one process serves a database file, so the
    lock is always granted."""

    def __init__(self, database: Engine | None) -> None:
        self.database = database
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        """Take the lock, or confirm it is still held; False when another process holds it."""
        if self.database is None or self.database.dialect.name != "postgresql":
            return True
        if self._connection is not None:
            try:  # the lock lives as long as this database session does
                self._connection.execute(select(literal(1)))
                self._connection.commit()
                return True
            except Exception:
                log.warning("lost the database session that held the trainer lock; re-electing")
                self.release()
        connection = self.database.connect()
        try:
            key = func.hashtext(func.current_schema())
            got = connection.execute(select(func.pg_try_advisory_lock(literal(TRAINER_LOCK_CLASS), key))).scalar()
            connection.commit()  # the lock is session-level: it outlives the transaction
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is not None:
            # Really close the database session (not just return it to the pool): that releases
            # the lock even if the connection is in a bad state.
            self._connection.invalidate()
            self._connection.close()
            self._connection = None

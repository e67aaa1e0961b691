"""The trainer lock: at most one process of a deployment runs training at a time."""

from __future__ import annotations

import logging

from sqlalchemy import ColumnElement, Connection, Engine, func, literal, select

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
            got = connection.execute(select(func.pg_try_advisory_lock(*_lock_key()))).scalar()
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
        """Free the lock before returning: another process asking next gets it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            # Closing the session alone frees the lock only once the server has ended it, some
            # time after the client hung up; unlocking first makes the release synchronous.
            connection.execute(select(func.pg_advisory_unlock(*_lock_key())))
            connection.commit()
        except Exception:
            log.warning("could not unlock the trainer lock; it is freed when the server ends the session", exc_info=True)
        finally:
            # Really close the database session (not just return it to the pool): that releases
            # the lock even if the connection is in a bad state.
            connection.invalidate()
            connection.close()


def _lock_key() -> tuple[ColumnElement[int], ColumnElement[int]]:
    """The trainer lock's two keys: one lock per schema (so per deployment)."""
    return literal(TRAINER_LOCK_CLASS), func.hashtext(func.current_schema())

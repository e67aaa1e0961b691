"""What GET /v1/events streams: the audit log's events as they commit, and the progress of running
training runs. Read from SQL, so the events of every process (a trainer replica, another API
replica) reach every stream; audit ids only grow, so "after id N" resumes where a client left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.domain import AuditAction, RunStatus

POLL_BATCH = 200  # audit events read per poll at most; a backlog drains over the next polls
# On PostgreSQL a transaction can commit after another that took a later audit id: an id seen
# missing is looked for again at every poll for this long (then it was rolled back, not late).
HOLE_GRACE_S = 30.0


@dataclass(frozen=True)
class EventFilter:
    """Which events a stream carries (None: any)."""

    edit_id: int | None = None
    training_run_id: int | None = None
    action: AuditAction | None = None

    def matches(self, event: store.AuditEvent) -> bool:
        return (
            (self.edit_id is None or event.edit_id == self.edit_id)
            and (self.training_run_id is None or event.training_run_id == self.training_run_id)
            and (self.action is None or event.action == self.action)
        )


@dataclass
class EventFeed:
    """One stream's position in the audit log: each `poll` returns what committed since the last
    (matching the filter, oldest first) and the running runs whose progress moved."""

    session_factory: sessionmaker[Session]
    where: EventFilter
    after: int | None = None  # the last audit id handed out; None: start after the newest one
    holes: dict[int, float] = field(default_factory=dict)  # missing id -> when first missed
    _progress: dict[int, tuple] = field(default_factory=dict)

    def poll(self) -> tuple[list[store.AuditEvent], list[store.TrainingRun]]:
        with self.session_factory() as session:
            if self.after is None:
                self.after = store.latest_audit_id(session)
            rows = store.audit_after(session, after=self.after, also=tuple(self.holes), limit=POLL_BATCH)
            self._track_holes(rows)
            runs = [run for run in self._runs(session) if self._moved(run)]
        return [e for e in rows if self.where.matches(e)], runs

    def _track_holes(self, rows: list[store.AuditEvent]) -> None:
        now = time.monotonic()
        expected = self.after + 1
        for event in rows:
            if event.id in self.holes:
                del self.holes[event.id]
                continue
            for missing in range(expected, event.id):
                self.holes.setdefault(missing, now)
            expected = event.id + 1
        self.after = max(self.after, expected - 1)
        for hole, since in list(self.holes.items()):
            if now - since > HOLE_GRACE_S:
                del self.holes[hole]

    def _runs(self, session: Session) -> list[store.TrainingRun]:
        """The running run this stream follows (by run, or the run its edit is in), or with
        neither filter the one running now. None with an action filter (progress is no audit
        action)."""
        if self.where.action is not None:
            return []
        run_id = self.where.training_run_id
        if run_id is None and self.where.edit_id is not None:
            edit = store.get_edit(session, edit_id=self.where.edit_id)
            if edit is None or edit.training_run_id is None:
                return []
            run_id = edit.training_run_id
        run = store.active_run(session) if run_id is None else store.get_run(session, run_id=run_id)
        return [run] if run is not None and run.status is RunStatus.RUNNING else []

    def _moved(self, run: store.TrainingRun) -> bool:
        mark = (run.edits_done, run.steps_done, run.steps_planned, run.current_loss)
        if self._progress.get(run.id) == mark:
            return False
        self._progress[run.id] = mark
        return True

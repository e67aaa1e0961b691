"""The live expert stack, kept equal to the active experts in SQL (in stack order, oldest first)
less those whose files this process cannot load (quarantined here, retried, reported)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, ExpertStatus
from app.errors import ExpertFilesInvalid
from app.services.checks import SYSTEM_ACTOR

if TYPE_CHECKING:
    from app.engine.engine import Engine, ExpertFileError, ExpertSpec
    from app.engine.stack import ActiveStack

log = logging.getLogger(__name__)


def stored_path(settings: Settings, path: Path) -> str:
    """How an expert's directory is recorded: relative to the data dir when inside it, so the
    data dir can move (or be mounted elsewhere); absolute otherwise."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(settings.data_dir.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def resolve_path(settings: Settings, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else settings.data_dir / candidate


def shown_path(settings: Settings, path: str | Path) -> str:
    """An expert's directory as messages show it: relative to the data dir, never absolute (a
    directory outside the data dir shows as its last component)."""
    resolved = resolve_path(settings, str(path)).resolve()
    try:
        return resolved.relative_to(settings.data_dir.resolve()).as_posix()
    except ValueError:
        return f".../{resolved.name}"


@dataclass(frozen=True)
class Quarantined:
    """An active expert this process does not serve: its files are missing or bad."""

    expert_id: int
    name: str
    path: str  # relative to the data dir
    reason: str


class LiveStack:
    """Keeps the engine's live stack (`Engine.stack`, its one owner) equal to the SQL rows, one
    sync at a time, under that owner's lock (`lock`): this class adds only the SQL side (the
    version loaded, the quarantined experts, their audit events).

    Every change to the active set commits first and then calls `sync()`, which reads the rows
    inside the lock, so the last sync always reflects the last commit. `version` is the SQL
    active-stack version this process has loaded; replicas poll `sync_if_changed()`.

    An active expert whose files are missing or corrupt does not stop the others: it is
    quarantined in this process (`quarantined`, with the reason; an `expert.load_failed` audit
    event once per expert and reason), and every poll checks its files again, so a restored
    file heals without a restart.
    """

    def __init__(self, engine: Engine, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self.engine = engine
        self.session_factory = session_factory
        self.settings = settings
        self.version: int | None = None
        self.quarantined: dict[int, Quarantined] = {}
        self._quarantined_specs: dict[int, ExpertSpec] = {}
        self._ids: dict[str, int] = {}
        self._reported: set[tuple[int, str]] = set()  # (expert id, reason) already audited

    @property
    def active(self) -> ActiveStack:
        return self.engine.stack

    @property
    def lock(self):
        """The live stack's one lock (re-entrant): hold it to change the stack and its records."""
        return self.engine.stack.lock

    def expert_id(self, name: str | None) -> int | None:
        return None if name is None else self._ids.get(name)

    def active_names(self) -> list[str]:
        """The experts this process serves, oldest first."""
        return self.active.names()

    def sync(self) -> list[str]:
        """Load the active experts of SQL into the engine (less the quarantined); returns the
        names it serves."""
        with self.lock:
            with self.session_factory() as session:
                version = store.get_stack_version(session)
                experts = store.list_experts(session, status=ExpertStatus.ACTIVE)
                self.apply(experts)
                self.version = version
            self.report_quarantined()
        return self.active_names()

    def sync_if_changed(self) -> bool:
        """Reload when the SQL version moved, or when a quarantined expert's files changed
        (they load now, or fail for another reason)."""
        with self.session_factory() as session:
            version = store.get_stack_version(session)
        if version != self.version:
            log.info("active-stack version %s -> %s: reloading experts", self.version, version)
        elif not self._quarantine_changed():
            return False
        self.sync()
        return True

    def _quarantine_changed(self) -> bool:
        """Check only the quarantined experts' files (not re-hash the whole stack every poll)."""
        with self.lock:
            for expert_id, spec in self._quarantined_specs.items():
                exc = self.active.check(spec)
                q = self.quarantined.get(expert_id)
                if exc is None or q is None or exc.reason != q.reason:
                    return True
            return False

    def apply(self, experts: Sequence[store.Expert], *, required: int | None = None) -> None:
        """Make the engine's stack `experts` (already in stack order) less those whose files are bad.

        A bad file of expert id `required` (the one being activated) raises ExpertFilesInvalid
        naming it, and nothing changes.
        """
        from app.engine.engine import ExpertFileError, ExpertSpec

        specs = [ExpertSpec(name=e.name, path=resolve_path(self.settings, e.path), sha256=e.sha256) for e in experts]
        by_name = {e.name: e for e in experts}
        must = [e.name for e in experts if e.id == required]
        with self.lock:
            try:
                failures = self.active.replace(specs, required=must)
            except ExpertFileError as exc:
                raise ExpertFilesInvalid(self._describe(by_name[exc.name or must[0]], exc)) from exc
            quarantined = {
                expert.id: Quarantined(
                    expert_id=expert.id,
                    name=expert.name,
                    path=shown_path(self.settings, expert.path),
                    reason=failures[expert.name].reason,
                )
                for expert in experts
                if expert.name in failures
            }
            for q in quarantined.values():
                if self.quarantined.get(q.expert_id) != q:
                    log.error(
                        "expert %r (id %s) is quarantined in this process, the rest of the stack serves: %s: %s",
                        q.name,
                        q.expert_id,
                        q.path,
                        q.reason,
                    )
            serving = {e.id for e in experts} - quarantined.keys()
            for q in self.quarantined.values():
                if q.expert_id in serving:
                    log.warning("expert %r (id %s) loads again: it serves", q.name, q.expert_id)
            self.quarantined = quarantined
            self._quarantined_specs = {e.id: s for e, s in zip(experts, specs) if e.id in quarantined}
            self._reported = {key for key in self._reported if key[0] in quarantined}
            self._ids = {e.name: e.id for e in experts if e.name not in failures}

    def report_quarantined(self) -> None:
        """One `expert.load_failed` audit event per quarantined expert and reason in this
        process's life (not one per poll); a failed write is retried at the next sync."""
        with self.lock:
            new = [q for q in self.quarantined.values() if (q.expert_id, q.reason) not in self._reported]
            if not new:
                return
            try:
                with self.session_factory() as session:
                    for q in new:
                        store.append_audit(
                            session,
                            actor=SYSTEM_ACTOR,
                            action=AuditAction.EXPERT_LOAD_FAILED,
                            expert_id=q.expert_id,
                            payload={"name": q.name, "path": q.path, "reason": q.reason},
                        )
                    session.commit()
            except Exception:
                log.warning("cannot record the quarantined experts in the audit log yet", exc_info=True)
                return
            self._reported.update((q.expert_id, q.reason) for q in new)

    def _describe(self, expert: store.Expert, exc: ExpertFileError) -> str:
        return f"cannot load expert {expert.name!r} (id {expert.id}) from {shown_path(self.settings, expert.path)}: {exc.reason}"

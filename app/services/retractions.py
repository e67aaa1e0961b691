"""Retracting single applied edits: the trainer retrains the expert that holds them without them
and swaps the replacement in for it in ONE transaction; until that commit the old expert serves.

A client's DELETE on an applied edit only marks it `retracting` (app.services.edits); the
request is durable in SQL from then on. The trainer (`Trainer.retract_pending`, called by the
worker before any run) takes the active experts holding retracting edits one at a time:

1. read the expert's edits: the retracting ones go, the applied ones stay;
2. none stays: the expert is deactivated and its edits retracted, one commit (no training);
3. else train a new expert on the edits that stay (the engine's usual training) and write its
   files; nothing in SQL changes meanwhile, so a crash here leaves the retraction to do again
   (and a folder no row names: `lemoe experts prune` removes it); a replacement that does not
   go live has its folder removed at once;
4. one commit: the old expert inactive (`replaced_by_id`), the new one active in its place in
   the stack (`stack_order`), the kept edits moved to it (`edit.retrained`), the retracting
   ones `retracted`, with `expert.replaced`, `expert.registered`, `expert.activated` events;
5. the live stack swaps old for new atomically (`LiveStack.sync`).

A failed training puts the edits back to `applied` with the error (`edit.retraction_failed`);
a shutdown leaves them `retracting`, resumed at the next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, ExpertStatus
from app.lemoe.types import Edit
from app.services.built_experts import add_live_expert, announce_live_expert
from app.services.checks import SYSTEM_ACTOR
from app.services.expert_files import abandon_built_expert
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import BuiltExpert, Engine, ExpertCheck

# (replacement, the edits it keeps, the name of the expert it replaces) -> (figures, why it must
# not go live or None): the trainer's check before going live.
LiveCheck = Callable[["BuiltExpert", Sequence[Edit], str], "tuple[ExpertCheck | None, str | None]"]

log = logging.getLogger(__name__)


class RetractionStopped(Exception):
    """Raised inside training when the process is shutting down: the edits stay retracting."""


@dataclass(frozen=True)
class Retraction:
    """What one retraction of an expert does: drop `retracted`, train on `kept`."""

    expert_id: int
    expert_name: str
    stack_order: int | None
    retracted: tuple[int, ...]
    kept: tuple[Edit, ...]
    requested_by: dict[int, str]  # retracted edit id -> the actor who asked

    @property
    def actor(self) -> str:
        """Who the expert's own events name: the first requester."""
        return self.requested_by[self.retracted[0]]


def pending_retractions(session_factory: sessionmaker[Session]) -> list[int]:
    """Active experts holding retracting edits, oldest request first."""
    with session_factory() as session:
        return store.experts_with_retractions(session)


def plan_retraction(session_factory: sessionmaker[Session], *, expert_id: int) -> Retraction | None:
    """The retraction to carry out on expert `expert_id`; None when it is not active or holds no
    retracting edit (any more)."""
    with session_factory() as session:
        expert = store.get_expert(session, expert_id=expert_id)
        if expert is None or expert.status is not ExpertStatus.ACTIVE:
            return None
        edits = store.edits_of_expert(session, expert_id=expert_id)
        retracting = [e.id for e in edits if e.status is EditStatus.RETRACTING]
        if not retracting:
            return None
        kept = tuple(Edit(e.id, e.prompt, e.target, tuple(e.rephrases or ()), e.subject) for e in edits if e.status is EditStatus.APPLIED)
        return Retraction(
            expert_id=expert.id,
            expert_name=expert.name,
            stack_order=expert.stack_order,
            retracted=tuple(retracting),
            kept=kept,
            requested_by={edit_id: _requester(session, edit_id) for edit_id in retracting},
        )


def _requester(session: Session, edit_id: int) -> str:
    page = store.list_audit(session, action=AuditAction.EDIT_RETRACTION_REQUESTED, edit_id=edit_id, limit=1)
    return page.items[0].actor if page.items else SYSTEM_ACTOR


def replacement_name(session_factory: sessionmaker[Session], retraction: Retraction) -> str:
    """`expert-x<old id>-e<first retracted edit>`: the same for a retraction resumed after a
    crash (its orphaned files are overwritten), another for any other."""
    base = f"expert-x{retraction.expert_id}-e{retraction.retracted[0]}"
    with session_factory() as session:
        name, n = base, 1
        while store.get_expert_by_name(session, name=name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name


def _mark_retracted(session: Session, retraction: Retraction, *, replaced_by: int | None) -> None:
    store.set_edit_status(session, edit_ids=retraction.retracted, status=EditStatus.RETRACTED)
    for edit_id in retraction.retracted:
        store.append_audit(
            session,
            actor=retraction.requested_by[edit_id],
            action=AuditAction.EDIT_RETRACTED,
            edit_id=edit_id,
            expert_id=retraction.expert_id,
            payload={"replaced_by_expert_id": replaced_by},
        )


def _unchanged(session: Session, retraction: Retraction) -> bool:
    """The expert's edits are still as planned: every one that must keep serving is among those
    trained (a restore meanwhile could have made another live again)."""
    kept = {e.edit_id for e in retraction.kept}
    live = (EditStatus.APPLIED, EditStatus.RETRACTING)
    edits = store.edits_of_expert(session, expert_id=retraction.expert_id)
    still = {e.id for e in edits if e.status is EditStatus.RETRACTING}
    return set(retraction.retracted) <= still and all(e.id in kept for e in edits if e.status in live and e.id not in retraction.retracted)


def retire_expert(session_factory: sessionmaker[Session], *, retraction: Retraction) -> bool:
    """Every edit of the expert is retracted: it is deactivated and they are `retracted`, in
    one commit. False (nothing changed) when it is no longer active or its edits changed."""
    with session_factory() as session:
        expert = store.deactivate_if_active(session, expert_id=retraction.expert_id)
        if expert is None or not _unchanged(session, retraction):
            session.rollback()
            return False
        store.append_audit(
            session,
            actor=retraction.actor,
            action=AuditAction.EXPERT_DEACTIVATED,
            expert_id=expert.id,
            payload={"name": expert.name, "edit_ids": [], "retracted_edit_ids": list(retraction.retracted)},
        )
        _mark_retracted(session, retraction, replaced_by=None)
        session.commit()
        return True


def replace_expert(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    retraction: Retraction,
    built: BuiltExpert,
    check: ExpertCheck | None = None,
) -> store.Expert | None:
    """The swap, ONE commit: the old expert inactive and replaced, the new one active in its
    place, the kept edits moved to it, the retracting ones retracted, with their events. None
    (nothing changed) when the old expert is no longer active or its edits changed meanwhile."""
    with session_factory() as session:
        # First statement: the conditional UPDATE takes the old expert's lock (SQLite: the
        # write lock) before anything is read, so what follows is read under it.
        old = store.deactivate_if_active(session, expert_id=retraction.expert_id)
        if old is None or not _unchanged(session, retraction):
            session.rollback()
            return None
        new = add_live_expert(
            session,
            settings=settings,
            built=built,
            check=check,
            stack_order=retraction.stack_order,
            details={"replaces_expert_id": old.id, "retracted_edit_ids": list(retraction.retracted)},
        )
        old.replaced_by_id = new.id
        moved = [e for e in store.edits_of_expert(session, expert_id=old.id) if e.id not in retraction.retracted]
        for edit in moved:
            edit.expert_id = new.id
        session.flush()
        common = {"actor": retraction.actor}
        store.append_audit(
            session,
            action=AuditAction.EXPERT_REPLACED,
            expert_id=old.id,
            payload={
                "name": old.name,
                "replaced_by_expert_id": new.id,
                "replaced_by": new.name,
                "retracted_edit_ids": list(retraction.retracted),
                "kept_edit_ids": [e.id for e in moved],
            },
            **common,
        )
        announce_live_expert(session, new, built, actor=retraction.actor)
        for edit in moved:
            store.append_audit(
                session,
                action=AuditAction.EDIT_RETRAINED,
                edit_id=edit.id,
                expert_id=new.id,
                payload={"from_expert_id": old.id, "retracted_edit_ids": list(retraction.retracted)},
                **common,
            )
        _mark_retracted(session, retraction, replaced_by=new.id)
        session.commit()
        return new


def fail_retraction(session_factory: sessionmaker[Session], *, retraction: Retraction, error: str) -> None:
    """Retraining failed: the edits the old expert still serves are `applied` again, with the
    error (a new DELETE retries), each with edit.retraction_failed."""
    with session_factory() as session:
        for edit_id in retraction.retracted:
            back = store.change_status_if(session, edit_id=edit_id, current=EditStatus.RETRACTING, to=EditStatus.APPLIED, error=error)
            if back is None:
                continue
            store.append_audit(
                session,
                actor=retraction.requested_by[edit_id],
                action=AuditAction.EDIT_RETRACTION_FAILED,
                edit_id=edit_id,
                expert_id=retraction.expert_id,
                payload={"error": error},
            )
        session.commit()


def retract_from_expert(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    engine: Engine,
    stack: LiveStack,
    expert_id: int,
    stopping: threading.Event,
    check: LiveCheck | None = None,
) -> bool:
    """Carry out the retraction of expert `expert_id` (steps 1-5 above); True when it is done.
    `stopping` set (shutdown) abandons it: the edits stay retracting, resumed at the next start.
    `check` measures the replacement before it goes live (with the old expert left out): below
    its minimums the retraction fails as a failed training does (the old expert keeps serving)."""
    retraction = plan_retraction(session_factory, expert_id=expert_id)
    if retraction is None:
        return False
    if not retraction.kept:
        log.info("retracting edits %s: expert %s holds no other, it is deactivated", list(retraction.retracted), retraction.expert_name)
        done = retire_expert(session_factory, retraction=retraction)
        if done:
            stack.sync()
        return done
    name = replacement_name(session_factory, retraction)
    log.info(
        "retracting edits %s: training %s on the %d other edits of %s",
        list(retraction.retracted),
        name,
        len(retraction.kept),
        retraction.expert_name,
    )

    def progress(step: int, loss: float) -> None:
        if stopping.is_set():
            raise RetractionStopped

    try:
        built = engine.build_expert(name, retraction.kept, progress=progress)
    except RetractionStopped:
        log.warning("retracting edits %s interrupted by shutdown; it resumes at the next start", list(retraction.retracted))
        return False
    except Exception as exc:
        log.exception("retracting edits %s failed", list(retraction.retracted))
        fail_retraction(session_factory, retraction=retraction, error=f"retraction failed: {type(exc).__name__}: {exc}")
        return False
    try:
        new = _go_live(session_factory, settings=settings, retraction=retraction, built=built, check=check)
    except BaseException:
        abandon_built_expert(session_factory, engine=engine, built=built)
        raise
    if new is None:
        abandon_built_expert(session_factory, engine=engine, built=built)
        return False
    stack.sync()  # old out, new in, in one swap between requests
    log.info("expert %s replaced by %s: edits %s retracted", retraction.expert_name, new.name, list(retraction.retracted))
    return True


def _go_live(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    retraction: Retraction,
    built: BuiltExpert,
    check: LiveCheck | None,
) -> store.Expert | None:
    """Check the replacement and swap it in (`replace_expert`); None when it does not go live:
    its check failed (the retraction fails) or the old expert changed meanwhile (planned again)."""
    figures = None
    if check is not None:
        figures, shortfall = check(built, retraction.kept, retraction.expert_name)
        if shortfall is not None:
            log.warning("retracting edits %s: the replacement %s does not go live: %s", list(retraction.retracted), built.name, shortfall)
            fail_retraction(session_factory, retraction=retraction, error=f"retraction failed: {shortfall}")
            return None
    new = replace_expert(session_factory, settings=settings, retraction=retraction, built=built, check=figures)
    if new is None:
        log.warning("expert %s changed while it was retrained; its retraction is planned again", retraction.expert_name)
    return new

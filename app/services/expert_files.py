"""Expert folders that no expert row names: the folder of a built expert that will not go live
(`abandon_built_expert`), and those a crash left behind (`prune_orphaned_folders`, at the
trainer's start-up and by `lemoe experts prune`).

The experts directory belongs to one database (run-numbered folder names already assume it): a
folder no row of ANY status names is nobody's. Inactive and quarantined experts keep their
folders, since they may be activated again."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction
from app.services.checks import SYSTEM_ACTOR
from app.services.stack import resolve_path, shown_path

if TYPE_CHECKING:
    from app.engine.engine import BuiltExpert, Engine

log = logging.getLogger(__name__)

# A younger folder may be an expert another process is writing or about to register right now.
ORPHAN_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class OrphanedFolder:
    path: str  # as messages show it: relative to the data dir
    age_s: float  # since anything in it last changed


def abandon_built_expert(session_factory: sessionmaker[Session], *, engine: Engine, built: BuiltExpert) -> None:
    """`built` will not go live: remove its folder, unless a row names it (a commit whose answer
    was lost may have registered it). Best effort: logged, never raises; what stays is pruned later."""
    try:
        with session_factory() as session:
            registered = store.get_expert_by_name(session, name=built.name) is not None
    except Exception:
        log.warning(
            "cannot tell whether expert %s was registered; its folder %s is left to the prune", built.name, built.path, exc_info=True
        )
        return
    if registered:
        return
    try:
        engine.discard_expert(built)
    except Exception:
        log.warning("cannot remove the folder %s of abandoned expert %s; the prune removes it later", built.path, built.name, exc_info=True)
    else:
        log.info("removed the folder of abandoned expert %s", built.name)


def find_orphaned_folders(session: Session, *, settings: Settings, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[OrphanedFolder]:
    """Folders under the experts directory that no expert row names (nor holds one of a row's
    folders) and in which nothing changed for `min_age_s`, by name."""
    root = settings.experts_dir
    if not root.is_dir():
        return []
    referenced = [resolve_path(settings, e.path).resolve() for e in store.list_experts(session)]
    now = time.time()
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        resolved = folder.resolve()
        if any(path == resolved or resolved in path.parents for path in referenced):
            continue
        age = now - _last_change(folder)
        if age >= min_age_s:
            found.append(OrphanedFolder(path=shown_path(settings, folder), age_s=round(age, 1)))
    return found


def prune_orphaned_folders(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    min_age_s: float = ORPHAN_MIN_AGE_S,
    dry_run: bool = False,
    actor: str = SYSTEM_ACTOR,
) -> list[OrphanedFolder]:
    """Remove the folders `find_orphaned_folders` finds, each with an expert_files.pruned audit
    event (`dry_run`: remove and record nothing); returns those removed (or that would be)."""
    with session_factory() as session:
        found = find_orphaned_folders(session, settings=settings, min_age_s=min_age_s)
        if dry_run:
            return found
        removed = []
        for orphan in found:
            try:
                shutil.rmtree(resolve_path(settings, orphan.path))
            except OSError:
                log.warning("cannot remove the orphaned expert folder %s", orphan.path, exc_info=True)
                continue
            log.info("removed the orphaned expert folder %s (no expert names it; unchanged for %.0f s)", orphan.path, orphan.age_s)
            store.append_audit(
                session, actor=actor, action=AuditAction.EXPERT_FILES_PRUNED, payload={"path": orphan.path, "age_s": orphan.age_s}
            )
            removed.append(orphan)
        session.commit()
        return removed


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder and anything in it."""
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:  # removed meanwhile: the folder is changing
            return time.time()
    return newest

"""The live expert stack, kept equal to the active experts in SQL (ordered by id, oldest first)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import ExpertStatus
from app.errors import ExpertFilesInvalid

if TYPE_CHECKING:
    from app.engine.engine import Engine

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


class LiveStack:
    """Rebuilds the engine's stack from SQL rows + files, one sync at a time.

    Every change to the active set commits first and then calls `sync()`, which reads the rows
    inside the lock, so the last sync always reflects the last commit. `version` is the SQL
    active-stack version this process has loaded; replicas poll `sync_if_changed()`.
    """

    def __init__(self, engine: Engine, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self.engine = engine
        self.session_factory = session_factory
        self.settings = settings
        self.lock = threading.RLock()
        self.version: int | None = None
        self._ids: dict[str, int] = {}

    def expert_id(self, name: str | None) -> int | None:
        return None if name is None else self._ids.get(name)

    def active_names(self) -> list[str]:
        return self.engine.active_expert_names()

    def sync(self) -> list[str]:
        """Load the active experts of SQL into the engine; ExpertFilesInvalid names a bad one."""
        with self.lock, self.session_factory() as session:
            version = store.get_stack_version(session)
            experts = store.list_experts(session, status=ExpertStatus.ACTIVE)
            self.apply(experts)
            self.version = version
        return self.active_names()

    def sync_if_changed(self) -> bool:
        with self.session_factory() as session:
            version = store.get_stack_version(session)
        if version == self.version:
            return False
        log.info("active-stack version %s -> %s: reloading experts", self.version, version)
        self.sync()
        return True

    def apply(self, experts: Sequence[store.Expert]) -> None:
        """Make the engine's stack exactly `experts` (already in id order); nothing changes on error."""
        from app.engine.engine import ExpertFileError, ExpertSpec

        specs = [
            ExpertSpec(name=e.name, path=resolve_path(self.settings, e.path), sha256=e.sha256)
            for e in experts
        ]
        with self.lock:
            try:
                self.engine.sync(specs)
            except ExpertFileError as exc:
                culprit = next((e for e, s in zip(experts, specs) if str(s.path) in str(exc)), None)
                which = (
                    f"expert {culprit.name!r} (id {culprit.id})"
                    if culprit is not None
                    else f"one of the experts {[e.name for e in experts]}"
                )
                raise ExpertFilesInvalid(f"cannot load {which}: {exc}") from exc
            self._ids = {e.name: e.id for e in experts}

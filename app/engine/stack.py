"""The one owner of the live expert stack: every change to what serves goes through here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence

from app.engine.experts import ExpertLoader, ExpertSpec
from app.lemoe.editor import LemoeEditor
from app.lemoe.io import ExpertFileError

log = logging.getLogger(__name__)


class ActiveStack:
    """Holds the editor's live stack under one lock (`lock`; re-entrant, so a caller may hold it
    around a change and the bookkeeping that goes with it). Files are loaded and checked by the
    `ExpertLoader` before the swap; requests read one snapshot of the stack and never wait."""

    def __init__(self, editor: LemoeEditor, loader: ExpertLoader) -> None:
        self.editor = editor
        self.loader = loader
        self.lock = threading.RLock()

    def names(self) -> list[str]:
        """The experts that serve, oldest first."""
        return [e.name for e in self.editor.stack]

    def replace(self, specs: Sequence[ExpertSpec], *, required: Collection[str] = ()) -> dict[str, ExpertFileError]:
        """Make the live stack `specs`, in that order (oldest first: newest wins ties), less the
        experts whose files are missing, bad or made for another serving config: those are
        returned by name (each error carries the expert's name and directory) and the rest serve.

        A bad file of an expert in `required` raises its ExpertFileError and changes nothing.
        """
        with self.lock:
            entries, failures = [], {}
            for spec in specs:
                try:
                    entries.append(self.loader.load(spec))
                except ExpertFileError as exc:
                    if spec.name in required:
                        raise
                    failures[spec.name] = exc
            if [id(e) for e in entries] != [id(e) for e in self.editor.stack]:
                self.editor.set_stack(entries)
                log.info("live stack: %s", [e.name for e in entries] or "empty")
            return failures

    def check(self, spec: ExpertSpec) -> ExpertFileError | None:
        """Whether `spec` loads now (None) or why not, without changing what serves."""
        try:
            self.loader.load(spec)
        except ExpertFileError as exc:
            return exc
        return None

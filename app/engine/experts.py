"""Loading and checking expert files, apart from holding the live stack (`app.engine.stack`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from app.lemoe.config import ServingConfig
from app.lemoe.expert import ExpertEntry
from app.lemoe.io import CONFIG_FILE, ExpertFileError, load_expert, weights_sha256


@dataclass(frozen=True)
class ExpertSpec:
    """Where an expert's files are and what their checksum must be (from its SQL row)."""

    name: str
    path: Path
    sha256: str


def serving_mismatch(entry: ExpertEntry, serving: ServingConfig) -> str | None:
    """Why `entry` cannot serve under `serving` (see `ServingConfig.mismatch`), or None; its
    width comes from its weights when its meta does not record it."""
    return serving.mismatch({"hidden_size": entry.module.down.in_features, **entry.meta})


def check_expert_files(spec: ExpertSpec, *, serving: ServingConfig | None = None, device: torch.device | str = "cpu") -> ExpertEntry:
    """Load an expert from its files and check them against its SQL row (sha256, name) and,
    given the running editor's `serving` config, against the one it was trained under. Needs no
    model, so `lemoe experts check` runs it offline. Raises ExpertFileError naming the expert."""
    path = Path(spec.path)
    try:
        entry = load_expert(path, expected_sha256=spec.sha256, device=device)
    except ExpertFileError as exc:
        raise exc.naming(spec.name) from exc
    if entry.name != spec.name:
        raise ExpertFileError(f"{CONFIG_FILE} names expert {entry.name!r}, not {spec.name!r}", directory=path, name=spec.name)
    if serving is not None and (reason := serving_mismatch(entry, serving)) is not None:
        raise ExpertFileError(reason, directory=path, name=spec.name)
    return entry


class ExpertLoader:
    """Loads checked experts for one running editor and keeps them loaded: a cached expert's
    weights file is still re-hashed at every load (never serve what SQL did not record; a file
    changed since is loaded and judged afresh). Holds no stack; thread-safe."""

    def __init__(self, serving: ServingConfig, device: torch.device | str = "cpu") -> None:
        self.serving = serving
        self.device = device
        self._entries: dict[str, ExpertEntry] = {}
        self._lock = threading.Lock()  # guards the cache only, never held while loading

    def load(self, spec: ExpertSpec) -> ExpertEntry:
        """The expert of `spec`, checked; ExpertFileError (with its name and directory) if not."""
        with self._lock:
            entry = self._entries.pop(spec.name, None)
        if entry is not None:
            try:
                unchanged = weights_sha256(Path(spec.path)) == spec.sha256
            except ExpertFileError:
                unchanged = False
            if not unchanged:
                entry = None
        if entry is None:
            entry = check_expert_files(spec, serving=self.serving, device=self.device)
        self.remember(entry)
        return entry

    def forget(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def remember(self, entry: ExpertEntry) -> None:
        """Keep `entry` (just trained and saved here) so the sync that makes it live need not
        read it back."""
        with self._lock:
            self._entries[entry.name] = entry

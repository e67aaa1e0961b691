"""Save and load one expert as `config.json` + `weights.safetensors` (no pickle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from app.lemoe.expert import Expert, ExpertEntry, converted

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
# The expert's weights are stored in half precision: half the bytes, answers unchanged (measured,
# docs/BENCHMARKS.md). Its keys stay float32: routing compares them against thresholds, and its
# decisions must not move. Files written in float32 before load as they are.
WEIGHTS_DTYPE = torch.float16


class ExpertFileError(RuntimeError):
    """An expert's files are missing, corrupt or do not match the model.

    `reason` says what is wrong without naming the directory (callers show the directory as
    they see fit: relative to their data dir); `directory` and `name` say which expert. The
    message names only the directory's last component: it may travel into a run's or an edit's
    error, which clients read, and an absolute path is none of their business.
    """

    def __init__(self, reason: str, *, directory: Path, name: str | None = None) -> None:
        self.directory = Path(directory)
        self.reason = reason.replace(str(directory), self.directory.name)
        self.name = name
        where = f"expert {name!r}" if name else f"expert directory {self.directory.name!r}"
        super().__init__(f"{where}: {self.reason}")

    def naming(self, name: str) -> ExpertFileError:
        """The same error, attributed to expert `name`."""
        return ExpertFileError(self.reason, directory=self.directory, name=name)


def save_expert(entry: ExpertEntry, directory: Path, *, weights_dtype: torch.dtype = WEIGHTS_DTYPE) -> str:
    """Write the expert atomically, its weights in `weights_dtype`; returns the sha256 of its
    weights file (as written)."""
    directory.mkdir(parents=True, exist_ok=True)
    module = entry.module
    tensors = {
        "down.weight": converted(module.down.weight.detach().cpu(), weights_dtype).contiguous(),
        "up.weight": converted(module.up.weight.detach().cpu(), weights_dtype).contiguous(),
        "anchors": entry.anchors.detach().cpu().float().contiguous(),
    }
    if module.codes is not None:
        tensors["codes"] = converted(module.codes.detach().cpu(), weights_dtype).contiguous()
    if entry.subject_anchors is not None:
        tensors["subject_anchors"] = entry.subject_anchors.detach().cpu().float().contiguous()
    if entry.relation_anchors is not None and entry.subject_lengths is not None:
        tensors["relation_anchors"] = entry.relation_anchors.detach().cpu().float().contiguous()
        tensors["subject_lengths"] = entry.subject_lengths.detach().cpu().long().contiguous()
    if entry.subject_span_anchors is not None and entry.subject_lengths is not None:  # a span key needs its length
        tensors["subject_span_anchors"] = entry.subject_span_anchors.detach().cpu().float().contiguous()
    if entry.subject_token_ids is not None and entry.subject_lengths is not None:  # as many ids as its length says
        tensors["subject_token_ids"] = entry.subject_token_ids.detach().cpu().long().contiguous()
    config = {
        "name": entry.name,
        "kind": module.kind,
        "hidden_size": module.down.in_features,
        "expert_hidden": module.down.out_features,
        "edit_ids": ["" if i is None else str(i) for i in entry.edit_ids],  # strings, as files always had
        "meta": entry.meta,
    }
    tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_weights))
    tmp_weights.replace(directory / WEIGHTS_FILE)
    tmp_config = directory / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2))
    tmp_config.replace(directory / CONFIG_FILE)
    return weights_sha256(directory)


def weights_sha256(directory: Path) -> str:
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ExpertFileError(f"missing {WEIGHTS_FILE}", directory=directory)
    digest = hashlib.sha256()
    try:
        with weights.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        reason = f"cannot read {WEIGHTS_FILE}: {exc.strerror or exc}"
        raise ExpertFileError(reason, directory=directory) from exc
    return digest.hexdigest()


def load_expert(
    directory: Path, *, expected_sha256: str | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ExpertEntry:
    """Rebuild a frozen expert, its module in `dtype` (the model's: it serves in it) whatever
    the file holds; a missing, unreadable or corrupt file (checksum mismatch) is an ExpertFileError."""
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise ExpertFileError(f"missing {' and '.join(missing)}", directory=directory)
    if expected_sha256 is not None:
        actual = weights_sha256(directory)
        if actual != expected_sha256:
            raise ExpertFileError(
                f"{WEIGHTS_FILE} is corrupt: sha256 {actual} != recorded {expected_sha256}",
                directory=directory,
            )
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(weights_path))
        module = Expert.from_weights(tensors["down.weight"], tensors["up.weight"], config["kind"], dtype=dtype, codes=tensors.get("codes"))
        if (module.down.in_features, module.down.out_features) != (config["hidden_size"], config["expert_hidden"]):
            raise ValueError(f"weights of shape {tuple(tensors['down.weight'].shape)} do not match its config")
        anchors = tensors["anchors"]
        name = str(config["name"])
    except Exception as exc:  # any file we cannot make sense of (JSON, safetensors, shapes, keys)
        raise ExpertFileError(f"cannot load its files: {type(exc).__name__}: {exc}", directory=directory) from exc
    module.to(device).requires_grad_(False)
    if module.codes is not None and len(module.codes) > anchors.shape[0]:
        raise ExpertFileError("edit codes do not match its anchors", directory=directory)
    subject_anchors = tensors.get("subject_anchors")
    if subject_anchors is not None and subject_anchors.shape[0] != anchors.shape[0]:
        raise ExpertFileError("subject keys do not match its anchors", directory=directory)
    relation_anchors, lengths = tensors.get("relation_anchors"), tensors.get("subject_lengths")
    if (relation_anchors is None) != (lengths is None) or (
        relation_anchors is not None and not relation_anchors.shape[0] == lengths.shape[0] == anchors.shape[0]
    ):
        raise ExpertFileError("relation keys do not match its anchors", directory=directory)
    span_anchors = tensors.get("subject_span_anchors")
    if span_anchors is not None and (lengths is None or span_anchors.shape[0] != anchors.shape[0]):
        raise ExpertFileError("subject span keys do not match its anchors", directory=directory)
    token_ids = tensors.get("subject_token_ids")
    if token_ids is not None and (
        lengths is None or token_ids.dim() != 2 or token_ids.shape[0] != anchors.shape[0] or bool((lengths > token_ids.shape[1]).any())
    ):
        raise ExpertFileError("subject token ids do not match its anchors", directory=directory)
    return ExpertEntry(
        name=name,
        module=module,
        anchors=anchors.to(device),
        edit_ids=[_edit_id(i) for i in config.get("edit_ids", [])],
        meta=dict(config.get("meta", {})),
        subject_anchors=None if subject_anchors is None else subject_anchors.to(device),
        relation_anchors=None if relation_anchors is None else relation_anchors.to(device),
        subject_lengths=lengths,
        subject_span_anchors=None if span_anchors is None else span_anchors.to(device),
        subject_token_ids=None if token_ids is None else token_ids.to(device),
    )


def _edit_id(raw) -> int | None:
    """An edit id as saved (a string of digits; None for anything else, e.g. a benchmark's label)."""
    text = str(raw)
    return int(text) if text.isdigit() else None

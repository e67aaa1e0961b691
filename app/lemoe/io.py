"""Save and load one expert as `config.json` + `weights.safetensors` (no pickle)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from app.lemoe.expert import Expert, ExpertEntry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class ExpertFileError(RuntimeError):
    """An expert's files are missing, corrupt or do not match the model."""


def save_expert(entry: ExpertEntry, directory: Path) -> str:
    """Write the expert atomically; returns the sha256 of its weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    module = entry.module
    tensors = {
        "down.weight": module.down.weight.detach().cpu().contiguous(),
        "up.weight": module.up.weight.detach().cpu().contiguous(),
        "anchors": entry.anchors.detach().cpu().float().contiguous(),
    }
    if entry.subject_anchors is not None:
        tensors["subject_anchors"] = entry.subject_anchors.detach().cpu().float().contiguous()
    config = {
        "name": entry.name,
        "kind": module.kind,
        "hidden_size": module.down.in_features,
        "expert_hidden": module.down.out_features,
        "edit_ids": entry.edit_ids,
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
    if not (directory / WEIGHTS_FILE).is_file():
        raise ExpertFileError(f"expert files missing in {directory}")
    digest = hashlib.sha256()
    with (directory / WEIGHTS_FILE).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_expert(
    directory: Path, *, expected_sha256: str | None = None, device: torch.device | str = "cpu"
) -> ExpertEntry:
    """Rebuild a frozen expert; a missing file or a checksum mismatch is an ExpertFileError."""
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise ExpertFileError(f"expert files missing in {directory}")
    if expected_sha256 is not None:
        actual = weights_sha256(directory)
        if actual != expected_sha256:
            raise ExpertFileError(
                f"{weights_path} is corrupt: sha256 {actual} != recorded {expected_sha256}"
            )
    try:
        config = json.loads(config_path.read_text())
        tensors = load_file(str(weights_path))
        module = Expert(config["hidden_size"], config["expert_hidden"], config["kind"])
        module.load_state_dict({"down.weight": tensors["down.weight"], "up.weight": tensors["up.weight"]})
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ExpertFileError(f"cannot load expert from {directory}: {exc}") from exc
    module.to(device).eval().requires_grad_(False)
    subject_anchors = tensors.get("subject_anchors")
    if subject_anchors is not None and subject_anchors.shape[0] != tensors["anchors"].shape[0]:
        raise ExpertFileError(f"cannot load expert from {directory}: subject keys do not match its anchors")
    return ExpertEntry(
        name=config["name"],
        module=module,
        anchors=tensors["anchors"].to(device),
        edit_ids=list(config.get("edit_ids", [])),
        meta=dict(config.get("meta", {})),
        subject_anchors=None if subject_anchors is None else subject_anchors.to(device),
    )

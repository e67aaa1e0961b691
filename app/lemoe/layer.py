"""Injection of the bypass MoE adaptor into one decoder layer's MLP."""

from __future__ import annotations

import torch
from torch import nn

from app.lemoe.config import Pooling
from app.lemoe.layout import layout_of
from app.lemoe.routing import answer_positions, answer_slots, current_route, decide


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM, wherever its layout keeps them."""
    return layout_of(model).layers_of(model)


class LemoeMLP(nn.Module):
    """`out = mlp(x) + expert_r(x)` where r is the request's route; `mlp` stays frozen."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        state = current_route()
        if state is None:
            return out
        if state.train_expert is not None:
            return out + state.train_expert(x)
        if not state.groups:
            return out
        out = out.clone()
        for expert_index, rows, slots in state.groups:
            entry = state.stack[expert_index]
            at = answer_positions(state.query_mask, rows, x.shape[1])
            added = entry.module(x[rows], answer_slots(slots, at))
            if entry.answer_only and at is not None:
                added = added * at.unsqueeze(-1).to(device=added.device, dtype=added.dtype)
            out[rows] = out[rows] + added
        return out


class QueryProbe:
    """Forward pre-hook on the route layer's MLP: decides the route once, at prefill."""

    def __init__(self, pooling: Pooling) -> None:
        self.pooling = pooling

    def __call__(self, module: nn.Module, args: tuple) -> None:
        state = current_route()
        if state is None or state.train_expert is not None or state.decisions is not None:
            return
        decide(state, args[0], self.pooling)


def inject_adaptor(model: nn.Module, layer: int, route_layer: int, pooling: Pooling) -> LemoeMLP:
    """Wrap `layer`'s MLP (idempotent) and hook the route layer's MLP input."""
    layout = layout_of(model)
    layers = layout.layers_of(model)
    block = layers[layer]
    mlp = layout.mlp_of(block)
    if not isinstance(mlp, LemoeMLP):
        mlp = LemoeMLP(mlp)
        layout.set_mlp(block, mlp)
    route_mlp = layout.mlp_of(layers[route_layer])
    if not getattr(route_mlp, "_lemoe_probe", False):
        route_mlp.register_forward_pre_hook(QueryProbe(pooling))
        route_mlp._lemoe_probe = True
    return mlp

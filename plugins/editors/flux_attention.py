"""The attention processor through which ``flux-edit`` records and injects single-stream attention values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from guardkit.errors import ConfigError


class ValueProcessor:
    """Attention processor for a single-stream block's ``attn`` that can record or replace V.

    It computes what diffusers' ``FluxAttnProcessor`` computes for a single-stream block (no separate
    text stream, no output projection), with V exposed between the projection and the attention:
    ``record`` (a dict) receives ``V.detach().clone()`` under ``index``; ``inject`` (a tensor), when set,
    replaces V; ``observer(index, V)`` sees the V actually used. Anything else is delegated to ``inner``.
    """

    def __init__(self, index: int, inner: Any) -> None:
        self.index = index
        self.inner = inner
        self.record: dict[int, torch.Tensor] | None = None
        self.inject: torch.Tensor | None = None
        self.observer: Callable[[int, torch.Tensor], None] | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or not getattr(attn, "pre_only", False):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if self.record is not None:
            self.record[self.index] = value.detach().clone()
        if self.inject is not None:
            if self.inject.shape != value.shape:
                raise ConfigError(f"flux-edit: recorded attention values {tuple(self.inject.shape)} do not match "
                                  f"{tuple(value.shape)} (same image size and max_sequence_length needed)")
            value = self.inject.to(device=value.device, dtype=value.dtype)
        if self.observer is not None:
            self.observer(self.index, value)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                    backend=getattr(self.inner, "_attention_backend", None),
                                    parallel_config=getattr(self.inner, "_parallel_config", None))
        return out.flatten(2, 3).to(query.dtype)

"""What every attention processor of distri does around its own attention, as diffusers' stock processor does."""

from __future__ import annotations

import torch


def tokens_in(attn, hidden_states: torch.Tensor, temb: torch.Tensor | None):
    """Spatial norm, ``[B, C, H, W] -> [B, HW, C]`` and group norm; the tokens and the 4-D shape (or None)."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape is not None:
        b, c, h, w = shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, shape


def tokens_out(attn, out: torch.Tensor, residual: torch.Tensor, shape: tuple | None) -> torch.Tensor:
    """Back to ``shape`` (when the input was 4-D), the residual connection and the output rescaling."""
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor

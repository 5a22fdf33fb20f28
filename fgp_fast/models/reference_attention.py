"""Reference attention: the appearance net's self-attention inputs condition the generator's.

The appearance net's ``attn1`` processors write their input tokens into a bank (a dict keyed by
module name); the generator's ``attn1`` processors attend over [own tokens; reference tokens] of the
module with the same name. The bank travels through ``cross_attention_kwargs={"reference": bank}``,
an argument of the forward call, never module state, so a step that takes the bank as input traces
for ONNX and compiles with ``fullgraph=True``. Cross-attention (``attn2``) keeps diffusers' SDPA
processor; it only accepts and ignores the ``reference`` argument so diffusers does not warn.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn
from ..errors import InputError

__all__ = ["ReferenceReadProcessor", "ReferenceWriteProcessor", "install_reference_read",
           "install_reference_write", "self_attention_names"]


def self_attention_names(model: nn.Module) -> list[str]:
    """Names of the spatial self-attention modules (``attn1``), in forward order; temporal
    (motion-module) attention is excluded, so a UNet and its video version share these names."""
    return [name for name, module in model.named_modules()
            if isinstance(module, Attention) and name.endswith(".attn1") and ".motion_modules." not in name]


def _self_attention(attn: Attention, hidden_states: Tensor, context: Tensor) -> Tensor:
    """SDPA self-attention of SD's transformer blocks (3-D tokens, no masks or norms), with the
    keys and values taken from ``context``."""
    batch = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


def _check_supported(attn: Attention, name: str) -> None:
    if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
        raise InputError(f"reference attention supports SD-style self-attention only; {name} has extra norms")


class ReferenceWriteProcessor:
    """Appearance net ``attn1``: store the input tokens in ``reference[name]``, then attend as usual."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, reference: dict | None = None) -> Tensor:
        if reference is not None:
            reference[self.name] = hidden_states
        return _self_attention(attn, hidden_states, hidden_states)


class ReferenceReadProcessor:
    """Generator ``attn1``: keys/values over [own tokens; reference tokens of the same-named module].

    An absent bank (or a bank without this name) gives plain self-attention. A bank of batch 1
    broadcasts over any batch of frames; otherwise its batch must match.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, reference: dict | None = None) -> Tensor:
        ref = None if reference is None else reference.get(self.name)
        if ref is None:
            return _self_attention(attn, hidden_states, hidden_states)
        batch = hidden_states.shape[0]
        if ref.shape[0] != batch:
            if ref.shape[0] != 1:
                raise InputError(f"reference bank for {self.name} has batch {ref.shape[0]}; expected 1 or {batch}")
            ref = ref.expand(batch, -1, -1)
        return _self_attention(attn, hidden_states, torch.cat([hidden_states, ref.to(hidden_states.dtype)], dim=1))


class _CrossAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor that accepts (and ignores) the ``reference`` argument."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 reference=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _install(model: nn.Module, processor_type: type) -> list[str]:
    names = self_attention_names(model)
    if not names:
        raise InputError(f"{type(model).__name__} has no spatial self-attention (attn1) modules")
    reference_names = set(names)
    for name, module in model.named_modules():
        if name in reference_names:
            _check_supported(module, name)
            module.set_processor(processor_type(name))
        elif isinstance(module, Attention) and ".motion_modules." not in name:
            module.set_processor(_CrossAttnProcessor())
    return names


def install_reference_write(model: nn.Module) -> list[str]:
    """Make ``model`` (the appearance net's UNet) write its ``attn1`` inputs to the bank; returns the names."""
    return _install(model, ReferenceWriteProcessor)


def install_reference_read(model: nn.Module) -> list[str]:
    """Make ``model`` (the generator UNet, 2-D or motion) read the bank in ``attn1``; returns the names."""
    return _install(model, ReferenceReadProcessor)

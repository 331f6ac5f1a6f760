"""Weights from a transformers state dict into the native Transformer.

The source is always a transformers-layout state dict: an in-memory model's
``state_dict()``, the tensors of a safetensors folder, or the state dict of a
GGUF checkpoint as transformers converts it (which un-permutes q/k for us).
Every expected tensor must be present with the right shape and nothing else
may be left over, so a wrong checkpoint fails loudly, naming the tensor,
instead of silently producing a half-random model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from evalkit.errors import EvalkitError
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.model import Transformer

# Buffers some checkpoints carry that hold nothing the model needs (RoPE is recomputed).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _expected_shapes(c: NativeConfig) -> dict[str, tuple[int, ...]]:
    """The transformers names and shapes a checkpoint for ``c`` must have."""
    q, kv, h, f = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        }
        if c.qkv_bias:
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,), p + "self_attn.v_proj.bias": (kv,)}
        if c.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        if c.mlp_bias:
            shapes |= {p + "mlp.gate_proj.bias": (f,), p + "mlp.up_proj.bias": (f,), p + "mlp.down_proj.bias": (h,)}
    return shapes


def check_state_dict(config: NativeConfig, state: Mapping[str, torch.Tensor]) -> None:
    """Raise EvalkitError naming the first missing, extra or misshapen tensor."""
    expected = _expected_shapes(config)
    present = {k for k in state if not k.endswith(_IGNORED_SUFFIXES)}
    if config.tie_embeddings:
        present.discard("lm_head.weight")  # an in-memory tied model lists the shared tensor twice
    missing = sorted(set(expected) - present)
    if missing:
        raise EvalkitError(f"checkpoint is missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    extra = sorted(present - set(expected))
    if extra:
        raise EvalkitError(
            f"checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} extra in all); "
            f"it is not a {config.model_type} checkpoint the native backend understands"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise EvalkitError(f"tensor {name!r} has shape {tuple(state[name].shape)}, the config needs {shape}")


def native_state_dict(config: NativeConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and fuse (q|k|v, gate|up) a checked transformers state dict into the native layout."""
    check_state_dict(config, state)
    out = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    out["lm_head.weight"] = state["model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
    for i in range(config.n_layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        out[n + "attn_norm.weight"] = state[p + "input_layernorm.weight"]
        out[n + "mlp_norm.weight"] = state[p + "post_attention_layernorm.weight"]
        out[n + "qkv.weight"] = torch.cat([state[attn + f"{x}_proj.weight"] for x in "qkv"])
        out[n + "o.weight"] = state[attn + "o_proj.weight"]
        out[n + "gate_up.weight"] = torch.cat([state[mlp + "gate_proj.weight"], state[mlp + "up_proj.weight"]])
        out[n + "down.weight"] = state[mlp + "down_proj.weight"]
        if config.qkv_bias:
            out[n + "qkv.bias"] = torch.cat([state[attn + f"{x}_proj.bias"] for x in "qkv"])
        if config.o_bias:
            out[n + "o.bias"] = state[attn + "o_proj.bias"]
        if config.mlp_bias:
            out[n + "gate_up.bias"] = torch.cat([state[mlp + "gate_proj.bias"], state[mlp + "up_proj.bias"]])
            out[n + "down.bias"] = state[mlp + "down_proj.bias"]
    return out


def build_model(
    config: NativeConfig, state: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> Transformer:
    """A ready-to-run Transformer on ``device`` in ``dtype`` holding the checkpoint's weights."""
    weights = native_state_dict(config, state)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device=device).to(dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name])
    model.inv_freq = torch.tensor(config.inv_freq, dtype=torch.float32, device=device)  # stays fp32
    return model.eval().requires_grad_(False)


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint folder."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else sorted(p.name for p in folder.glob("*.safetensors"))
    )
    if not files:
        raise EvalkitError(f"no *.safetensors weights in {folder}; the native backend reads safetensors or GGUF checkpoints")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state

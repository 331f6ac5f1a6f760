"""NativeConfig: the few numbers the native Transformer needs, read from a transformers config.

Every LLaMA-family checkpoint (SmolLM2, Llama 2/3, Qwen2, Mistral) is the same
network up to these fields, so one small model class serves all of them. The
RoPE frequencies are computed by transformers' own ``ROPE_INIT_FUNCTIONS`` so
every scaling variant (linear, dynamic NTK, YaRN, Llama 3) is bit-identical to
the reference instead of a re-derivation that could drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evalkit.errors import EvalkitError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class NativeConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rope_type: str
    inv_freq: tuple[float, ...]
    attention_scaling: float
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()

    @classmethod
    def from_hf(cls, hf_config: Any) -> NativeConfig:
        """Read a LlamaConfig / MistralConfig / Qwen2Config; anything else is a clear error."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise EvalkitError(
                f"the native backend does not support model_type {model_type!r}; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (use backend='hf' for other architectures)"
            )
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise EvalkitError(f"the native backend needs hidden_act 'silu' (SwiGLU), config has {act!r}; use backend='hf'")
        if getattr(hf_config, "partial_rotary_factor", 1.0) != 1.0:
            raise EvalkitError("the native backend does not support partial_rotary_factor != 1; use backend='hf'")
        n_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
        inv_freq, scaling, rope_type = _rope_frequencies(hf_config)
        n_layers = hf_config.num_hidden_layers
        window = getattr(hf_config, "sliding_window", None)
        layer_types = getattr(hf_config, "layer_types", None)
        if window is None:
            sliding = (False,) * n_layers
        elif layer_types is not None:
            sliding = tuple(t == "sliding_attention" for t in layer_types)
        else:  # Mistral: every layer slides
            sliding = (True,) * n_layers
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or n_heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            max_position_embeddings=hf_config.max_position_embeddings,
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases and no o bias; Llama's attention_bias covers all four.
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            rope_type=rope_type,
            inv_freq=inv_freq,
            attention_scaling=scaling,
            sliding_window=window if any(sliding) else None,
            sliding_layers=sliding,
        )


def _rope_frequencies(hf_config: Any) -> tuple[tuple[float, ...], float, str]:
    """Inverse frequencies and cos/sin scale, from transformers' own RoPE initialisers.

    "dynamic" NTK scaling only changes the frequencies beyond
    ``max_position_embeddings``, which the engine never reaches (it is the
    context limit), so its static frequencies are exact.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise EvalkitError(
            f"the native backend does not support rope_scaling type {rope_type!r}; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)} (use backend='hf')"
        )
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    return tuple(inv_freq.float().tolist()), float(attention_scaling), rope_type

"""The LLaMA-family Transformer, in the spirit of gpt-fast's model.py.

RMSNorm, RoPE, SwiGLU, grouped-query attention through SDPA. The q/k/v and
gate/up projections are fused into one matmul each (fewer, larger GEMMs).
Numerics follow transformers' Llama/Qwen2/Mistral code step by step (fp32
RMSNorm, cos/sin from fp32 frequencies cast to the activation dtype) so logits
agree to float rounding.

``forward`` takes explicit positions (-1 = padding) and writes the new keys
and values into the per-row slots of a :class:`KVCache`; it returns the final
hidden states, and :meth:`Transformer.logits` is applied only where a caller
needs logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.models.native.cache import KVCache
from evalkit.models.native.config import NativeConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class PackedLinear(nn.Module):
    """An ``nn.Linear`` that also holds its weight in oneDNN's blocked layout, used for decode-sized inputs.

    Why: at decode batch sizes a fp32 ``F.linear`` on the plain ``[out, in]``
    matrix streams weights at about a third of the memory bandwidth on the
    2-core machines we measure on; the blocked layout makes every projection
    and the LM head about 2x faster at 1-16 rows (benchmarks/README.md).
    Inputs of more rows (prefill, scoring) keep the plain weight and
    transformers' exact fp32 GEMM: scores stay bit-comparable with
    transformers, and only generation steps run on oneDNN (a different
    summation order: logits move by ~1e-5 relative). A generation step
    (:meth:`Transformer.generation_steps`: decoding, and checking speculative
    drafts, rows x (1 + K) tokens) takes the packed weight up to
    ``GENERATION_ROWS`` rows, where it measured 2.5-2.9x faster than
    ``F.linear`` at 16-256 rows. The price is a second copy of the projection weights.
    """

    BATCH_HINT = 16  # the row count oneDNN tunes the layout for; 8-64 measured within noise of each other
    MAX_ROWS = 16  # inputs of up to this many rows take the packed weight
    GENERATION_ROWS = 256  # ... and inside generation steps, up to this many

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), self.BATCH_HINT)
        self.max_rows = self.MAX_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.max_rows * x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack_linears(model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Pack for fp32 on CPU, with a torch built with oneDNN (every official CPU wheel), when the second
    copy of the weights fits comfortably (at most a quarter of the free memory)."""
    if device.type != "cpu" or dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    import psutil

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return weight_bytes < psutil.virtual_memory().available / 4


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, c: NativeConfig, sliding: bool) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.sliding = sliding
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.qkv = nn.Linear(c.hidden_size, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=c.qkv_bias)
        self.o = nn.Linear(c.n_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        self.mlp_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gate_up = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor, layer: int, ctx: _StepContext) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv(self.attn_norm(x))
        q, k, v = qkv.split([self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], -1)
        q = q.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.n_kv, self.head_dim)
        v = v.view(b, s, self.n_kv, self.head_dim)
        q = q * ctx.cos + rotate_half(q) * ctx.sin
        k = k * ctx.cos_kv + rotate_half(k) * ctx.sin_kv
        if ctx.cache is not None:
            keys, values = ctx.cache.k[layer], ctx.cache.v[layer]
            keys[ctx.row_idx, :, ctx.slot] = k  # [b, s, kv, d] into the rows' own slots
            values[ctx.row_idx, :, ctx.slot] = v
        if ctx.fresh:  # nothing cached before this call: attend to the new tokens directly
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        else:
            if ctx.rows is not None:
                keys, values = keys[ctx.rows], values[ctx.rows]
            keys, values = keys[:, :, : ctx.kv_len], values[:, :, : ctx.kv_len]
        mask = ctx.sliding_mask if self.sliding else ctx.mask
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=ctx.causal, enable_gqa=self.n_kv != self.n_heads
        )
        x = x + self.o(y.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class _StepContext:
    """Everything one forward call shares across layers: slots, masks, cos/sin (computed once, not per layer).

    Without a cache (scoring), ``subtree_ends`` packs several prefix trees
    into one row, each laid out depth first: a token sees the earlier columns
    whose subtree (which ends before column ``subtree_ends[column]``) contains
    it, i.e. its ancestors, so one row can hold a context and all its
    continuations, or several such items.
    """

    def __init__(
        self,
        config: NativeConfig,
        inv_freq: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None,
        rows: torch.Tensor | None,
        dtype: torch.dtype,
        static: bool,
        subtree_ends: torch.Tensor | None,
    ) -> None:
        b, s = positions.shape
        device = positions.device
        self.cache, self.rows, self.causal = cache, rows, False
        valid = positions >= 0
        if cache is None:
            self.fresh, key_pos = True, positions
        else:
            row_ids = rows if rows is not None else torch.arange(b, device=device)
            self.row_idx = row_ids[:, None].expand(b, s)
            base = cache.lengths[row_ids]
            self.slot = torch.where(valid, base[:, None] + valid.cumsum(1) - 1, cache.max_len)
            cache.pos[self.row_idx, self.slot] = positions
            cache.lengths[row_ids] = base + valid.sum(1)
            # A static (CUDA graph) step always reads the whole cache; otherwise read only the used slots.
            self.fresh = not static and bool((base == 0).all())
            if self.fresh:
                key_pos = positions
            else:
                self.kv_len = cache.max_len + 1 if static else int(cache.lengths[row_ids].max())
                key_pos = cache.pos[row_ids, : self.kv_len]
        self.mask = self.sliding_mask = None
        if cache is None and subtree_ends is None and config.sliding_window is None:
            # one right-padded sequence per row: padding sits after every real token, plain causal attention is exact
            self.causal = True
        else:
            q, k = positions[:, None, :, None], key_pos[:, None, None, :]
            allowed = (k >= 0) & (k <= q)
            if subtree_ends is not None:
                column = torch.arange(s, device=device)
                allowed &= (column[None, :] <= column[:, None]) & (column[:, None] < subtree_ends[:, None, None, :])
            # A padding query may see nothing; let it see slot 0 so SDPA never averages an empty set (NaN).
            pad_query = ~valid[:, None, :, None]
            first = torch.zeros_like(allowed)
            first[..., 0] = True
            self.mask = allowed | (pad_query & first)
            if config.sliding_window is not None:
                self.sliding_mask = (allowed & (q - k < config.sliding_window)) | (pad_query & first)
        freqs = positions.clamp(min=0).float()[..., None] * inv_freq  # [b, s, d/2], fp32 like transformers
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * config.attention_scaling).to(dtype)
        sin = (emb.sin() * config.attention_scaling).to(dtype)
        self.cos, self.sin = cos[:, None], sin[:, None]  # broadcast over heads, [b, 1, s, d]
        self.cos_kv, self.sin_kv = cos[:, :, None], sin[:, :, None]  # keys stay [b, s, kv, d] for the cache write


class Transformer(nn.Module):
    def __init__(self, config: NativeConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, config.sliding_layers[i]) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("inv_freq", torch.tensor(config.inv_freq, dtype=torch.float32), persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None,
        rows: torch.Tensor | None = None,
        static: bool = False,
        subtree_ends: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states ``[b, s, hidden]`` for ``tokens`` at ``positions``, appended to cache ``rows``.

        ``rows`` (default: every cache row, in order) lets a continuous-batching
        engine prefill new requests into the slots that finished rows freed.
        With ``cache=None`` nothing is stored (scoring): each row is one
        right-padded sequence, or packed prefix trees (``subtree_ends``, see ``_StepContext``).
        """
        x = self.embed(tokens)
        ctx = _StepContext(self.config, self.inv_freq, positions, cache, rows, x.dtype, static, subtree_ends)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, ctx)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @contextmanager
    def generation_steps(self) -> Iterator[None]:
        """Packed weights for inputs of up to ``PackedLinear.GENERATION_ROWS`` rows, for the duration."""
        packed = [m for m in self.modules() if isinstance(m, PackedLinear)]
        for module in packed:
            module.max_rows = PackedLinear.GENERATION_ROWS
        try:
            yield
        finally:
            for module in packed:
                module.max_rows = PackedLinear.MAX_ROWS

    def pack_linears(self) -> None:
        """Swap every projection and the LM head for a :class:`PackedLinear` (see ``can_pack_linears``)."""
        for module in (*self.layers, self):
            for name in ("qkv", "o", "gate_up", "down", "lm_head"):
                child = getattr(module, name, None)
                if isinstance(child, nn.Linear):  # idempotent: a second engine over the same model packs nothing
                    setattr(module, name, PackedLinear(child))

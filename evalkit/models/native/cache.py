"""A preallocated KV cache with per-row lengths.

Layout ``[layers, batch, kv_heads, max_len + 1, head_dim]``. Each row fills its
own slots from 0 upwards, so rows of different lengths share a batch without
storing padding; ``pos[row, slot]`` holds the absolute position of the token in
that slot (-1 = empty), and attention masks are built from it. The extra last
slot is a scratch slot: padding tokens (position -1) are written there, which
keeps every write the same shape (CUDA-graph friendly) and harmless.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from evalkit.errors import EvalkitError
from evalkit.models.native.config import NativeConfig


def bytes_per_token(config: NativeConfig, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers: 2 x layers x kv_heads x head_dim x dtype size."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * torch.empty((), dtype=dtype).element_size()


def free_memory(device: torch.device) -> int:
    """Bytes the cache may still take on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def check_fits(
    config: NativeConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device, announce: bool = True
) -> int:
    """Print the cache's size before allocating it (when ``announce``); a clear error when it cannot fit."""
    need = bytes_per_token(config, dtype) * batch * (max_len + 1)
    free = free_memory(device)
    if announce:
        print(
            f"[native] KV cache: {batch} rows x {max_len} tokens x {bytes_per_token(config, dtype)} B/token "
            f"= {need / 2**20:.1f} MiB on {device} ({free / 2**20:.0f} MiB free)",
            file=sys.stderr,
        )
    if need > 0.9 * free:
        raise EvalkitError(
            f"the KV cache needs {need / 2**30:.2f} GiB ({batch} rows x {max_len} tokens) but only "
            f"{free / 2**30:.2f} GiB is free on {device}; lower batch_size= or the maximum length"
        )
    return need


@dataclass
class KVCache:
    k: torch.Tensor  # [layers, batch, kv_heads, max_len + 1, head_dim]
    v: torch.Tensor
    pos: torch.Tensor  # [batch, max_len + 1] absolute position per slot, -1 = empty
    lengths: torch.Tensor  # [batch] slots used per row

    @classmethod
    def allocate(
        cls,
        config: NativeConfig,
        batch: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
        announce: bool = True,
    ) -> KVCache:
        check_fits(config, batch, max_len, dtype, device, announce)
        shape = (config.n_layers, batch, config.n_kv_heads, max_len + 1, config.head_dim)
        return cls(
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
            pos=torch.full((batch, max_len + 1), -1, dtype=torch.long, device=device),
            lengths=torch.zeros(batch, dtype=torch.long, device=device),
        )

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3] - 1

    def used(self) -> int:
        """The longest row: attention never needs to look past it."""
        return int(self.lengths.max()) if self.batch else 0

    def reorder(self, index: torch.Tensor) -> KVCache:
        """Row ``i`` becomes old row ``index[i]`` (repeats allowed, for beams and shared prompts), copying only the
        used slots. The row count may change; when it does not, the tensors are updated in place, so a captured
        decode step (which holds their addresses) stays valid."""
        index = index.to(self.k.device)
        used = self.used()
        if len(index) == self.batch:
            self.k[:, :, :, :used] = self.k[:, index, :, :used]
            self.v[:, :, :, :used] = self.v[:, index, :, :used]
            self.pos.copy_(self.pos[index])
            self.lengths.copy_(self.lengths[index])
            return self
        k = self.k.new_zeros((self.k.shape[0], len(index), *self.k.shape[2:]))
        v = torch.zeros_like(k)
        k[:, :, :, :used] = self.k[:, index, :, :used]
        v[:, :, :, :used] = self.v[:, index, :, :used]
        self.k, self.v = k, v
        self.pos = self.pos[index]
        self.lengths = self.lengths[index]
        return self

    def truncate(self, lengths: torch.Tensor) -> None:
        """Each row keeps its first ``lengths[row]`` slots (speculative decoding takes back rejected drafts)."""
        slots = torch.arange(self.pos.shape[1], device=self.pos.device)
        self.pos.masked_fill_(slots[None, :] >= lengths[:, None], -1)
        self.lengths.copy_(lengths)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Free ``rows`` for new requests (continuous batching): their slots become empty."""
        self.pos[rows] = -1
        self.lengths[rows] = 0

"""NativeModel: the native Transformer as a LanguageModel and a Backend.

Where an evaluation spends its time, and what the engine does about it:

* generation is evalkit's one scheduler (:mod:`evalkit.decoding.scheduler`:
  every strategy, continuous batching, speculative decoding) over this
  engine's Backend methods; the engine keeps no generation loop. What it
  adds is speed underneath: a KV cache with per-row slots (a row restarts
  without moving the others), prompts prefilled a chunk of tokens at a time,
  packed decode-sized matmuls on CPU, and on CUDA a decode step captured as
  a CUDA graph over a cache whose shape is kept between calls;
* loglikelihood computes every shared token prefix once: a 4-way
  multiple-choice item costs one context, not four, and items sharing a
  few-shot prompt or a label, or endings sharing their first words, share
  those tokens too. Rather than copying a context's KV cache once per
  continuation, the requests become prefix trees packed into rows with an
  ancestor mask (each token sees the tokens on its path from the root): the
  same computation without the copies, and short items share rows instead of
  padding. Each position that predicts a target is projected once;
* rolling loglikelihood scores lm-eval's disjoint (or strided) windows;
* logits are computed only where they are used (the last prompt position for
  generation, the continuation positions for scoring), a chunk of rows at a
  time, so ``[batch x positions x vocab]`` is never materialised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from evalkit.decoding.config import DecodingConfig
from evalkit.models.eos import eos_token_ids as checkpoint_eos_ids
from evalkit.models.logprobs import document_groups, target_logprobs
from evalkit.models.native.cache import KVCache, bytes_per_token
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.model import Transformer, can_pack_linears
from evalkit.models.native.weights import build_model
from evalkit.models.padding import left_pad
from evalkit.models.request_plan import TokenPair, check_stride, encode_pair, prefix_token_id, rolling_windows, tok_encode, truncate_pair
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood, Timing

# Where the shared part outweighs the new part, a prefix tree grows to this many tokens. Sharing a 600-token
# few-shot prompt among 18 items beats computing it 18 times even though attention over 2048 columns costs a
# 135M model about 70% on top of its per-token matmuls; much wider, attention eats the saving.
_SHARED_TREE_TOKENS = 2048

OnDone = Callable[[dict[int, Response]], None]  # requests just finished: index in the call -> final response


@dataclass
class _Segment:
    """Scoring requests that share a token prefix, as one prefix tree laid out depth first.

    Each request's input (context + continuation minus its last token) is a
    path from the root; a path shares the nodes of the prefix it has in common
    with the tree, so a context shared by four endings, an activity label
    shared by several items and a word that starts two endings are each
    computed once. A node's position is its depth, and it attends to its
    ancestors: in depth-first order those are exactly the earlier columns
    whose subtree (``ends``: one past the subtree's last column) still
    contains it. ``predictors[i]`` is the column whose hidden state predicts
    ``targets[i]``.
    """

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    predictors: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    members: list[tuple[int, int]] = field(default_factory=list)  # (request index, its number of targets)

    @property
    def is_chain(self) -> bool:
        """One unbranched path: plain causal attention is exact for it."""
        return all(end == len(self.tokens) for end in self.ends)

    @classmethod
    def grow(cls, pairs: list[TokenPair], pack_tokens: int) -> list[_Segment]:
        """Prefix trees over ``pairs``, taken in sorted order so that requests sharing a prefix are neighbours.

        A request joins the current tree when it shares a prefix with it and
        the tree stays within ``pack_tokens``; or, when the shared part is at
        least as long as the new part (a few-shot prompt, a long context and
        its continuations), within ``_SHARED_TREE_TOKENS`` or twice the
        request's length. Attention inside a tree is quadratic in its size, so
        a short shared prefix (the one-token context of every document's first
        perplexity window) never makes a giant tree.
        """
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0] + pairs[i][1][:-1])
        out: list[_Segment] = []
        path: list[int] = []
        nodes: list[int] = []  # column of each node on the current path
        for i in order:
            ctx, cont = pairs[i]
            new_path = ctx + cont[:-1]
            shared = 0
            limit = min(len(path), len(new_path))
            while shared < limit and path[shared] == new_path[shared]:
                shared += 1
            new = len(new_path) - shared
            room = max(_SHARED_TREE_TOKENS, 2 * len(new_path)) if shared >= new else pack_tokens
            if not out or shared == 0 or len(out[-1].tokens) + new > room:
                out.append(cls())
                shared, nodes = 0, []
            seg, nodes = out[-1], nodes[:shared]
            for depth in range(shared, len(new_path)):
                nodes.append(len(seg.tokens))
                seg.tokens.append(new_path[depth])
                seg.positions.append(depth)
            seg.predictors += nodes[len(ctx) - 1 :]
            seg.targets += cont
            seg.members.append((i, len(cont)))
            path = new_path
        for seg in out:
            seg.ends = _subtree_ends(seg.positions)
        return out


def _subtree_ends(depths: list[int]) -> list[int]:
    """For nodes in depth-first order: one past the last column of each node's subtree."""
    ends, open_nodes = [len(depths)] * len(depths), []
    for column, depth in enumerate(depths):
        while open_nodes and depths[open_nodes[-1]] >= depth:
            ends[open_nodes.pop()] = column
        open_nodes.append(column)
    return ends


class NativeModel:
    """The native engine behind ``--backend native``; see the module docstring for what it optimises.

    ``batch_size`` is the number of requests generation runs at once (the
    scheduler's cache rows, times beams or samples); scoring packs its rows by tokens
    instead, ``token_budget`` per forward call, since a row of a
    multiple-choice item and a 1024-token perplexity window differ 10x in cost.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        name: str = "native",
        batch_size: int = 8,
        max_length: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        stride: int | None = None,
        token_budget: int | None = None,
        pack_tokens: int = 256,
        compile: bool | None = None,
    ) -> None:
        self.model = model
        self.config: NativeConfig = model.config
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length or self.config.max_position_embeddings
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype
        self.vocab_size = self.config.vocab_size
        if eos_token_ids is None:
            eos_token_ids = checkpoint_eos_ids(None, None, tokenizer)
        self.eos_token_ids = tuple(dict.fromkeys(int(t) for t in eos_token_ids))
        check_stride(stride, self.max_length)
        self.stride = stride
        # Tokens per forward call in prefill and scoring: bounds activations. On CPU, 1024 keeps a call's activations
        # in cache and ran hellaswag 20% faster than 4096 (benchmarks/README.md); a GPU needs bigger calls to be busy.
        self.token_budget = token_budget or (1024 if self.device.type == "cpu" else 16384)
        self.pack_tokens = pack_tokens  # scoring: the size a prefix tree grows to, and the rows trees are packed into
        self._announced = 0
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.draft: Any = None  # a draft model's Backend for speculative decoding (see evalkit.models.draft)
        # CUDA: the decode step reads the whole cache (static shapes) under torch.compile "reduce-overhead",
        # which captures it as a CUDA graph. On CPU the eager step reads only the used slots.
        self.static_decode = self.device.type == "cuda" if compile is None else compile
        if not self.static_decode and can_pack_linears(model, self.device, self.dtype):
            model.pack_linears()
        self._decode = self._compiled_decode() if self.static_decode else None
        self._static_cache: KVCache | None = None
        self.static_rows = self.static_decode  # a captured decode step is specialised to the row count
        self.ragged_rows = True

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_hf(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        **kw: Any,
    ) -> NativeModel:
        """Build from an in-memory transformers causal LM (its config and state dict)."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = dtype or next(model.parameters()).dtype
        config = NativeConfig.from_hf(model.config)
        if "eos_token_ids" not in kw:
            kw["eos_token_ids"] = checkpoint_eos_ids(getattr(model, "generation_config", None), model.config, tokenizer)
        kw.setdefault("name", getattr(model.config, "_name_or_path", "") or "native")
        return cls(build_model(config, model.state_dict(), device, dtype), tokenizer, batch_size=batch_size, **kw)

    # ---------------------------------------------------------------- Backend

    def new_cache(self, rows: int, max_len: int) -> KVCache:
        """Eager decoding gets a cache sized to the requests.

        A captured decode step (CUDA graph) reads the whole cache, so its
        length is rounded up to a power of two and the cache is kept and reused
        by the next call of the same shape: every call after the first replays
        the graph instead of recording (or compiling) a new one.
        """
        if not self.static_decode:
            return self._allocate(rows, max_len)
        length = max(256, 1 << (max_len - 1).bit_length())
        cache = self._static_cache
        if cache is not None and cache.batch == rows and cache.max_len == length:
            cache.reset_rows(torch.arange(rows, device=self.device))
            return cache
        self._static_cache = None  # release the old one before allocating its successor
        self._static_cache = self._allocate(rows, length)
        return self._static_cache

    def _allocate(self, rows: int, max_len: int) -> KVCache:
        need = bytes_per_token(self.config, self.dtype) * rows * (max_len + 1)
        announce = need > self._announced  # say it once per new high-water mark, not on every call
        self._announced = max(self._announced, need)
        cache = KVCache.allocate(self.config, rows, max_len, self.dtype, self.device, announce)
        if self.static_decode:
            for t in (cache.k, cache.v, cache.pos, cache.lengths):
                torch._dynamo.mark_static_address(t, guard=False)  # a new cache re-records the graph, no recompile
        return cache

    @torch.inference_mode()
    def prefill(self, cache: KVCache, rows: torch.Tensor, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Restart ``rows`` from ``prompts``, fed a chunk of ``token_budget`` tokens at a time; next-token logits."""
        rows = rows.to(self.device)
        cache.reset_rows(rows)
        tokens, positions = left_pad(prompts, self.device)
        step = max(1, self.token_budget // tokens.shape[0])
        for s in range(0, tokens.shape[1], step):
            hidden = self.model(tokens[:, s : s + step], positions[:, s : s + step], cache, rows)
        return self.model.logits(hidden[:, -1]).float()

    @torch.inference_mode()
    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, *, last_only: bool = False
    ) -> torch.Tensor:
        """Every row gains its tokens; a one-token step over a static cache replays the captured graph."""
        if self._decode is not None and token_ids.shape[1] == 1 and cache is self._static_cache:
            hidden = self._decode(token_ids, positions, cache)
            return self.model.logits(hidden[:, -1:] if last_only else hidden).float()
        with self.model.generation_steps():
            hidden = self.model(token_ids, positions, cache)
            return self.model.logits(hidden[:, -1:] if last_only else hidden).float()

    def reorder_cache(self, cache: KVCache, index: torch.Tensor) -> KVCache:
        return cache.reorder(index)

    def truncate(self, cache: KVCache, lengths: torch.Tensor) -> None:
        cache.truncate(lengths.to(self.device))

    # ---------------------------------------------------------------- scoring

    # ``on_done({index: response})``, where a method takes it, is called with the requests that just finished
    # (a forward call's, a decode step's, a group of documents') as soon as their responses are final: the
    # runner reports and caches by it.

    def loglikelihood(self, requests: Sequence[Loglikelihood], on_done: OnDone | None = None) -> list[Response]:
        pairs = []
        for r in requests:
            ctx, cont = encode_pair(self.tokenizer, r.context, r.continuation, self.max_length)
            pairs.append(truncate_pair(ctx, cont, self.max_length))
        out: list[Response | None] = [None] * len(pairs)

        def scored(results: dict[int, tuple[list[float], bool, Timing]]) -> None:
            for m, (lps, greedy, timing) in results.items():
                out[m] = Response(token_ids=pairs[m][1], token_logprobs=lps, logprob=sum(lps), is_greedy=greedy, timing=timing)
            if on_done is not None:
                on_done({m: out[m] for m in results})

        self._score(pairs, scored)
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood], on_done: OnDone | None = None) -> list[Response]:
        """With ``on_done``, documents are scored in groups that fill at least one forward call
        (:func:`document_groups`), so they finish one group at a time instead of all at the end."""
        prefix = prefix_token_id(self.tokenizer)
        windows, owner = [], []
        counts = [0] * len(requests)
        for i, r in enumerate(requests):
            for w in rolling_windows(tok_encode(self.tokenizer, r.text), prefix, self.max_length, self.stride):
                windows.append(w)
                owner.append(i)
                counts[i] += 1
        out = [Response(logprob=0.0) for _ in requests]
        per_call = max(1, self.token_budget // self.max_length)  # full windows in one forward call
        groups = document_groups(counts, per_call) if on_done is not None else [range(len(requests))]
        first = 0
        for group in groups:  # a document's windows are contiguous, and so are a group's
            last = first + sum(counts[i] for i in group)
            for i, (_, cont), (lps, _, timing) in zip(owner[first:last], windows[first:last], self._score(windows[first:last])):
                out[i].token_ids += cont
                out[i].token_logprobs += lps
                out[i].logprob += sum(lps)
                out[i].timing.prefill_s += timing.prefill_s
                out[i].timing.prompt_tokens += timing.prompt_tokens
            first = last
            if on_done is not None:
                on_done({i: out[i] for i in group})
        return out

    @torch.inference_mode()
    def _score(
        self,
        pairs: list[TokenPair],
        scored: Callable[[dict[int, tuple[list[float], bool, Timing]]], None] | None = None,
    ) -> list[tuple[list[float], bool, Timing]]:
        """Per pair: continuation token logprobs, whether greedy decoding would produce it, timing.

        Pairs become prefix trees (:class:`_Segment`): a shared context, or
        any shared prefix, is computed once, and each position that predicts a
        target is projected to the vocabulary once. This is the shared-prefix
        reuse of a copied KV cache without the copies. Trees are packed into
        rows (first-fit decreasing, no padding between them) at least
        ``pack_tokens`` long, and rows of similar width into forward calls of
        about ``token_budget`` tokens. ``scored({index: result})`` is called
        with a forward call's pairs as soon as it is done.
        """
        segments = sorted(_Segment.grow(pairs, self.pack_tokens), key=lambda seg: -len(seg.tokens))
        rows: list[list[_Segment]] = []
        room: list[int] = []
        widths: list[int] = []
        for seg in segments:
            fit = next((r for r, free in enumerate(room) if free >= len(seg.tokens)), None)
            if fit is None:
                widths.append(max(self.pack_tokens, len(seg.tokens)))
                rows.append([seg])
                room.append(widths[-1] - len(seg.tokens))
            else:
                rows[fit].append(seg)
                room[fit] -= len(seg.tokens)
        results: list[Any] = [None] * len(pairs)
        start = 0
        while start < len(rows):  # rows come widest first: a call's width is its first row's
            per_call = max(1, self.token_budget // widths[start])
            self._score_rows(rows[start : start + per_call], results)
            if scored is not None:
                scored({m: results[m] for row in rows[start : start + per_call] for seg in row for m, _ in seg.members})
            start += per_call
        return results

    def _score_rows(self, rows: list[list[_Segment]], results: list[Any]) -> None:
        t0 = time.perf_counter()
        width = max(sum(len(seg.tokens) for seg in row) for row in rows)
        shape = (len(rows), width)
        tokens = torch.zeros(shape, dtype=torch.long)
        positions = torch.full(shape, -1, dtype=torch.long)
        ends = torch.arange(width).repeat(len(rows), 1)  # padding: an empty subtree, no query sees it
        columns: dict[tuple[int, int], int] = {}  # (row, column) predicting a target -> its projected row
        predictors: list[int] = []
        targets: list[int] = []
        for r, row in enumerate(rows):
            offset = 0
            for seg in row:
                cols = slice(offset, offset + len(seg.tokens))
                tokens[r, cols] = torch.tensor(seg.tokens)
                positions[r, cols] = torch.tensor(seg.positions)
                ends[r, cols] = torch.tensor(seg.ends) + offset
                predictors += [columns.setdefault((r, offset + c), len(columns)) for c in seg.predictors]
                targets += seg.targets
                offset += len(seg.tokens)
        chains = all(len(row) == 1 and row[0].is_chain for row in rows)  # plain causal attention is exact
        subtree_ends = None if chains else ends.to(self.device)
        hidden = self.model(tokens.to(self.device), positions.to(self.device), None, subtree_ends=subtree_ends)
        where = torch.tensor(list(columns), device=self.device)
        lps, hits = target_logprobs(
            self.model.logits,
            hidden[where[:, 0], where[:, 1]],
            torch.tensor(targets, device=self.device),
            torch.tensor(predictors, device=self.device),
        )
        lps, hits = lps.tolist(), hits.tolist()
        members = [member for row in rows for seg in row for member in seg.members]
        share = (time.perf_counter() - t0) / len(members)
        offset = 0
        for m, n in members:
            timing = Timing(prefill_s=share, prompt_tokens=n)
            results[m] = (lps[offset : offset + n], all(hits[offset : offset + n]), timing)
            offset += n

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[Generate], decoding: DecodingConfig, on_done: OnDone | None = None) -> list[Response]:
        """Every strategy through evalkit's one scheduler, on this engine's cache."""
        from evalkit.decoding import generate as run_decoding

        return run_decoding(self, self.tokenizer, list(requests), decoding, self.batch_size, on_done=on_done,
                            draft=self.draft)

    def _compiled_decode(self):
        """The decode step under torch.compile "reduce-overhead" (a CUDA graph on CUDA).

        Static shapes (``dynamic=False``): each (rows, cache length) pair gets
        its own specialised graph, and ``_generation_cache`` keeps the pairs few.
        """
        model = self.model

        def step(tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return model(tokens, positions, cache, static=True)

        return torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)


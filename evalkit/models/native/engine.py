"""NativeModel: the native Transformer as a LanguageModel and a Backend.

Where an evaluation spends its time, and what the engine does about it:

* generation (greedy) runs with continuous batching: a queue of prompts, a
  fixed number of cache rows, and each row a finished request frees is
  prefilled with the next prompt, so a long answer never holds a batch of
  short ones hostage. Every other strategy (sampling, penalties, beams) goes
  through the shared decoding loop over the Backend methods, so it is the
  same algorithm as on every other white-box adapter;
* loglikelihood encodes each distinct context once and scores every
  continuation against it (a 4-way multiple-choice item costs one context,
  not four). Rather than copying a context's KV cache once per continuation,
  the context and its continuations go into one packed row with a tree mask
  (each continuation sees the context and itself): the same computation
  without the copies, and short items share rows instead of padding;
* rolling loglikelihood scores lm-eval's disjoint (or strided) windows;
* logits are computed only where they are used (the last prompt position for
  generation, the continuation positions for scoring), a chunk of rows at a
  time, so ``[batch x positions x vocab]`` is never materialised.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError
from evalkit.models.native.cache import KVCache, bytes_per_token
from evalkit.models.native.config import NativeConfig
from evalkit.models.native.model import Transformer, can_pack_linears
from evalkit.models.native.tokens import encode_pair, prefix_token_id, rolling_windows, tok_encode, truncate_pair
from evalkit.models.native.weights import build_model
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood, Timing

_LOGIT_ROWS = 1024  # positions per lm_head call when scoring: bounds the [rows x vocab] temporary


@dataclass
class _Segment:
    """One context and its continuations, flattened: the context (branch 0), then each continuation but
    its last token as branch 1, 2, ...; ``predictors[j]`` lists the columns whose hidden states predict
    continuation j's tokens (the context's last column predicts every continuation's first token)."""

    tokens: list[int]
    positions: list[int]
    branches: list[int]
    predictors: list[list[int]]
    continuations: list[list[int]]
    members: list[int]

    @classmethod
    def build(cls, context: list[int], continuations: list[list[int]], members: list[int]) -> "_Segment":
        tokens, positions, branches = list(context), list(range(len(context))), [0] * len(context)
        predictors = []
        for branch, cont in enumerate(continuations, 1):
            start = len(tokens)
            tokens += cont[:-1]
            positions += range(len(context), len(context) + len(cont) - 1)
            branches += [branch] * (len(cont) - 1)
            predictors.append([len(context) - 1, *range(start, start + len(cont) - 1)])
        return cls(tokens, positions, branches, predictors, continuations, members)

    @classmethod
    def split(
        cls, context: list[int], continuations: list[list[int]], members: list[int], limit: int
    ) -> list["_Segment"]:
        """One context's continuations as segments of at most ``limit`` tokens (the model's context length;
        or the context and one continuation, where that alone is longer). Attention inside a segment is
        quadratic in its length, so a context shared by many long continuations (the one-token context of
        every document's first perplexity window) must not become one giant row."""
        out, taken, size = [], [], len(context)
        for member, cont in zip(members, continuations):
            if taken and size + len(cont) - 1 > limit:
                out.append(cls.build(context, [c for _, c in taken], [m for m, _ in taken]))
                taken, size = [], len(context)
            taken.append((member, cont))
            size += len(cont) - 1
        out.append(cls.build(context, [c for _, c in taken], [m for m, _ in taken]))
        return out


@dataclass
class _Slot:
    """A generation request living in one cache row."""

    index: int
    max_new: int
    stop: tuple[str, ...]
    prompt_tokens: int
    ignore_eos: bool
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0


class NativeModel:
    """The native engine behind ``--backend native``; see the module docstring for what it optimises.

    ``batch_size`` is the number of cache rows generation runs with (and what
    the shared decoding loop batches by); scoring packs its rows by tokens
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
            eos_token_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.eos_token_ids = tuple(dict.fromkeys(int(t) for t in eos_token_ids))
        self.stride = stride
        # Tokens per forward call in prefill and scoring: bounds activations. A GPU needs bigger calls to be busy.
        self.token_budget = token_budget or (4096 if self.device.type == "cpu" else 16384)
        self.pack_tokens = pack_tokens  # row length that short scoring segments are packed into
        self._announced = 0
        # CUDA: the decode step reads the whole cache (static shapes) under torch.compile "reduce-overhead",
        # which captures it as a CUDA graph. On CPU the eager step reads only the used slots.
        self.static_decode = self.device.type == "cuda" if compile is None else compile
        if not self.static_decode and can_pack_linears(model, self.device, self.dtype):
            model.pack_linears()
        self._decode = self._compiled_decode() if self.static_decode else None
        self._static_cache: KVCache | None = None

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
    ) -> "NativeModel":
        """Build from an in-memory transformers causal LM (its config and state dict)."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = dtype or next(model.parameters()).dtype
        config = NativeConfig.from_hf(model.config)
        if "eos_token_ids" not in kw:
            kw["eos_token_ids"] = _eos_ids(model, tokenizer)
        kw.setdefault("name", getattr(model.config, "_name_or_path", "") or "native")
        return cls(build_model(config, model.state_dict(), device, dtype), tokenizer, batch_size=batch_size, **kw)

    # ---------------------------------------------------------------- Backend

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        need = bytes_per_token(self.config, self.dtype) * batch * (max_len + 1)
        announce = need > self._announced  # say it once per new high-water mark, not on every batch
        self._announced = max(self._announced, need)
        cache = KVCache.allocate(self.config, batch, max_len, self.dtype, self.device, announce)
        if self.static_decode:
            for t in (cache.k, cache.v, cache.pos, cache.lengths):
                torch._dynamo.mark_static_address(t, guard=False)  # a new cache re-records the graph, no recompile
        return cache

    def _generation_cache(self, rows: int, need: int) -> KVCache:
        """The cache greedy generation runs in.

        Eager decoding gets a cache sized to the requests. A captured decode
        step (CUDA graph) reads the whole cache, so its length is rounded up to
        a power of two and the cache is kept and reused by the next call of
        the same shape: every call after the first replays the graph instead
        of recording (or compiling) a new one.
        """
        if not self.static_decode:
            return self.new_cache(rows, need)
        length = max(256, 1 << (need - 1).bit_length())
        cache = self._static_cache
        if cache is not None and cache.batch == rows and cache.max_len == length:
            cache.reset_rows(torch.arange(rows, device=self.device))
            return cache
        self._static_cache = None  # release the old one before allocating its successor
        self._static_cache = self.new_cache(rows, length)
        return self._static_cache

    @torch.inference_mode()
    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, *, last_only: bool = False
    ) -> torch.Tensor:
        hidden = self.model(token_ids, positions, cache)
        if last_only:
            hidden = hidden[:, -1:]
        return self.model.logits(hidden).float()

    def reorder_cache(self, cache: KVCache, index: torch.Tensor) -> KVCache:
        return cache.reorder(index)

    # ---------------------------------------------------------------- scoring

    def loglikelihood(self, requests: Sequence[Loglikelihood]) -> list[Response]:
        pairs = []
        for r in requests:
            ctx, cont = encode_pair(self.tokenizer, r.context, r.continuation)
            pairs.append(truncate_pair(ctx, cont, self.max_length))
        return [
            Response(token_ids=cont, token_logprobs=lps, logprob=sum(lps), is_greedy=greedy, timing=timing)
            for (_, cont), (lps, greedy, timing) in zip(pairs, self._score(pairs))
        ]

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood]) -> list[Response]:
        prefix = prefix_token_id(self.tokenizer)
        windows, owner = [], []
        for i, r in enumerate(requests):
            for w in rolling_windows(tok_encode(self.tokenizer, r.text), prefix, self.max_length, self.stride):
                windows.append(w)
                owner.append(i)
        out = [Response(logprob=0.0) for _ in requests]
        for i, (_, cont), (lps, _, timing) in zip(owner, windows, self._score(windows)):
            out[i].token_ids += cont
            out[i].token_logprobs += lps
            out[i].logprob += sum(lps)
            out[i].timing.prefill_s += timing.prefill_s
            out[i].timing.prompt_tokens += timing.prompt_tokens
        return out

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[list[float], bool, Timing]]:
        """Per pair: continuation token logprobs, whether greedy decoding would produce it, timing.

        Pairs sharing a context become one *segment*: the context once, then
        each continuation (minus its last token) as a branch that sees the
        context and itself only. Segments are packed into rows up to
        ``pack_tokens`` long (no padding between them), rows into forward
        calls of about ``token_budget`` tokens. This is the shared-prefix
        reuse of a copied KV cache without the copies: a 4-way
        multiple-choice item costs its context once.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        segments = [
            segment
            for ctx, members in groups.items()
            for segment in _Segment.split(list(ctx), [pairs[i][1] for i in members], members, self.max_length)
        ]
        segments.sort(key=lambda seg: -len(seg.tokens))
        rows: list[list[_Segment]] = []  # first-fit decreasing
        room: list[int] = []
        width = max(self.pack_tokens, len(segments[0].tokens)) if segments else 0
        for seg in segments:
            fit = next((r for r, free in enumerate(room) if free >= len(seg.tokens)), None)
            if fit is None:
                rows.append([seg])
                room.append(width - len(seg.tokens))
            else:
                rows[fit].append(seg)
                room[fit] -= len(seg.tokens)
        results: list[Any] = [None] * len(pairs)
        per_call = max(1, self.token_budget // max(1, width))
        for start in range(0, len(rows), per_call):
            self._score_rows(rows[start : start + per_call], results)
        return results

    def _score_rows(self, rows: list[list["_Segment"]], results: list[Any]) -> None:
        t0 = time.perf_counter()
        width = max(sum(len(seg.tokens) for seg in row) for row in rows)
        shape = (len(rows), width)
        tokens = torch.zeros(shape, dtype=torch.long)
        positions = torch.full(shape, -1, dtype=torch.long)
        seg_ids = torch.full(shape, -1, dtype=torch.long)
        branches = torch.zeros(shape, dtype=torch.long)
        where: list[tuple[int, int]] = []  # (row, column) of the hidden state predicting each target
        targets: list[int] = []
        for r, row in enumerate(rows):
            offset = 0
            for k, seg in enumerate(row):
                cols = slice(offset, offset + len(seg.tokens))
                tokens[r, cols] = torch.tensor(seg.tokens)
                positions[r, cols] = torch.tensor(seg.positions)
                seg_ids[r, cols] = k
                branches[r, cols] = torch.tensor(seg.branches)
                for cols_of_member, cont in zip(seg.predictors, seg.continuations):
                    where += [(r, offset + c) for c in cols_of_member]
                    targets += cont
                offset += len(seg.tokens)
        single = all(len(row) == 1 and len(row[0].continuations) == 1 for row in rows)
        segments = None if single else (seg_ids.to(self.device), branches.to(self.device))
        hidden = self.model(tokens.to(self.device), positions.to(self.device), None, segments=segments)
        index = torch.tensor(where, device=self.device)
        lps, hits = self._target_logprobs(hidden[index[:, 0], index[:, 1]], torch.tensor(targets, device=self.device))
        lps, hits = lps.tolist(), hits.tolist()
        members = [(m, len(cont)) for row in rows for seg in row for m, cont in zip(seg.members, seg.continuations)]
        share = (time.perf_counter() - t0) / len(members)
        offset = 0
        for m, n in members:
            timing = Timing(prefill_s=share, prompt_tokens=n)
            results[m] = (lps[offset : offset + n], all(hits[offset : offset + n]), timing)
            offset += n

    def _prefill(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, rows: torch.Tensor
    ) -> torch.Tensor:
        """Feed left-padded prompts into cache ``rows`` a chunk of columns at a time; last hidden state per row."""
        step = max(1, self.token_budget // tokens.shape[0])
        for s in range(0, tokens.shape[1], step):
            hidden = self.model(tokens[:, s : s + step], positions[:, s : s + step], cache, rows)
        return hidden[:, -1]

    def _target_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(target) and argmax == target for ``[n, hidden]`` states, ``_LOGIT_ROWS`` rows of logits at a time."""
        lps, hits = [], []
        for s in range(0, len(targets), _LOGIT_ROWS):
            logits = self.model.logits(hidden[s : s + _LOGIT_ROWS]).float()
            t = targets[s : s + _LOGIT_ROWS, None]
            lps.append((logits.gather(1, t) - torch.logsumexp(logits, dim=-1, keepdim=True))[:, 0])
            hits.append(logits.argmax(-1) == t[:, 0])
        return torch.cat(lps), torch.cat(hits)

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[Generate], decoding: DecodingConfig) -> list[Response]:
        """Plain greedy: the continuous-batching fast path; any other strategy: the shared decoding loop."""
        if not requests:
            return []
        if not _plain_greedy(decoding):
            from evalkit.decoding import generate as shared_generate

            return shared_generate(self, self.tokenizer, list(requests), decoding, self.batch_size)
        return self._generate_greedy(list(requests), decoding)

    @torch.inference_mode()
    def _generate_greedy(self, requests: list[Generate], decoding: DecodingConfig) -> list[Response]:
        """Greedy decoding with continuous batching over ``batch_size`` cache rows."""
        budgets = [decoding.max_new_tokens or r.max_new_tokens for r in requests]
        prompts = [list(self.tokenizer.encode(r.prompt)) for r in requests]
        for ids, n in zip(prompts, budgets):  # the shared loop's checks, so both paths accept the same requests
            if not ids:
                raise EvalkitError("a Generate request has an empty prompt (no tokens); give it some text")
            if n < 1 or len(ids) + n > self.max_length:
                raise EvalkitError(
                    f"a prompt of {len(ids)} tokens plus max_new_tokens={n} does not fit the model's context of "
                    f"{self.max_length} tokens; shorten the prompt or lower max_new_tokens (>= 1)"
                )
        queue = deque(sorted(range(len(requests)), key=lambda i: -len(prompts[i])))
        n_rows = min(self.batch_size, len(requests))
        cache = self._generation_cache(n_rows, max(len(p) + n for p, n in zip(prompts, budgets)))
        slots: list[_Slot | None] = [None] * n_rows
        out: list[Response | None] = [None] * len(requests)
        last_token = torch.zeros(n_rows, dtype=torch.long, device=self.device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        while queue or any(slots):
            free = [i for i, s in enumerate(slots) if s is None]
            if free and queue:  # prefill waiting prompts into the freed rows
                t0 = time.perf_counter()
                admitted = [(row, queue.popleft()) for row in free[: len(queue)]]
                rows = torch.tensor([row for row, _ in admitted], device=self.device)
                cache.reset_rows(rows)
                tokens, positions = _left_pad([prompts[i] for _, i in admitted], self.device)
                logits = self.model.logits(self._prefill(tokens, positions, cache, rows)).float()
                picked, picks = self._pick(logits, [0] * len(admitted), decoding, eos)
                last_token[rows] = picked
                prefill_s = (time.perf_counter() - t0) / len(admitted)
                for (row, i), (token, lp) in zip(admitted, picks):
                    stop = tuple(requests[i].stop) + tuple(decoding.stop)
                    slots[row] = _Slot(i, budgets[i], stop, len(prompts[i]), decoding.ignore_eos, prefill_s=prefill_s)
                    self._advance(slots, row, token, lp, out)
                continue  # admit more before decoding if rows finished at once
            if not queue and not all(slots) and not self.static_decode:
                # Nothing left to admit: drop finished rows so they cost nothing more.
                keep = [i for i, s in enumerate(slots) if s is not None]
                index = torch.tensor(keep, device=self.device)
                cache.reorder(index)
                last_token = last_token[index]
                slots = [slots[i] for i in keep]
            t0 = time.perf_counter()
            active = torch.tensor([s is not None for s in slots], device=self.device)
            positions = torch.where(active, cache.lengths, -1)[:, None]
            if self._decode is not None:
                hidden = self._decode(last_token[:, None], positions, cache)
            else:
                hidden = self.model(last_token[:, None], positions, cache)
            logits = self.model.logits(hidden[:, -1]).float()
            generated = [len(s.tokens) if s else 0 for s in slots]
            last_token, picks = self._pick(logits, generated, decoding, eos)  # finished rows' picks go unused
            share = (time.perf_counter() - t0) / sum(s is not None for s in slots)  # split as the shared loop does
            for row, (token, lp) in enumerate(picks):
                if slots[row] is not None:
                    slots[row].decode_s += share
                    self._advance(slots, row, token, lp, out)
        return out  # type: ignore[return-value]

    def _pick(
        self, logits: torch.Tensor, generated: list[int], decoding: DecodingConfig, eos: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[int, float]]]:
        """Greedy token per row (on the device, for the next step) and (token, logprob) per row (on the host,
        one transfer); EOS is barred until ``min_new_tokens`` (as HF does)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        scores = logprobs
        if decoding.min_new_tokens and not decoding.ignore_eos and len(eos):
            early = torch.tensor([g < decoding.min_new_tokens for g in generated], device=logits.device)
            scores = logprobs.clone()
            scores[early[:, None] & torch.isin(torch.arange(logits.shape[1], device=logits.device), eos)] = -float("inf")
        tokens = scores.argmax(-1)
        host = torch.stack([tokens.double(), logprobs.gather(1, tokens[:, None])[:, 0].double()]).tolist()
        return tokens, [(int(t), lp) for t, lp in zip(*host)]

    def _advance(self, slots: list[_Slot | None], row: int, token: int, logprob: float, out: list) -> None:
        """Append ``token`` to the request in ``row``; on EOS, a stop string or the budget, free the row."""
        s = slots[row]
        s.tokens.append(token)
        s.logprobs.append(logprob)
        text = self.tokenizer.decode(s.tokens, skip_special_tokens=True) if s.stop else None
        hits = [text.find(stop) for stop in s.stop if stop in text] if s.stop else []
        if hits:
            text = text[: min(hits)]
        if token in self.eos_token_ids and not s.ignore_eos:  # the shared loop's order: EOS, stop, budget
            reason = "eos"
        elif hits:
            reason = "stop"
        elif len(s.tokens) >= s.max_new:
            reason = "length"
        else:
            return
        if text is None:
            text = self.tokenizer.decode(s.tokens, skip_special_tokens=True)
        out[s.index] = Response(
            text=text,
            token_ids=s.tokens,
            token_logprobs=s.logprobs,
            logprob=sum(s.logprobs),
            finish_reason=reason,
            timing=Timing(s.prefill_s, s.decode_s, s.prompt_tokens, len(s.tokens)),
        )
        slots[row] = None

    def _compiled_decode(self):
        """The decode step under torch.compile "reduce-overhead" (a CUDA graph on CUDA).

        Static shapes (``dynamic=False``): each (rows, cache length) pair gets
        its own specialised graph, and ``_generation_cache`` keeps the pairs few.
        """
        model = self.model

        def step(tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return model(tokens, positions, cache, static=True)

        return torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)


def _plain_greedy(d: DecodingConfig) -> bool:
    """Greedy without penalties or beams: what the continuous-batching fast path implements."""
    return (
        d.num_beams == 1
        and d.temperature == 0
        and d.num_return_sequences == 1
        and d.repetition_penalty in (None, 1.0)
        and not d.frequency_penalty
        and not d.presence_penalty
        and not d.no_repeat_ngram_size
    )


def _left_pad(seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and positions (0 upwards; -1 on padding) for prompts of different lengths, aligned right."""
    width = max(map(len, seqs))
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    positions = torch.full((len(seqs), width), -1, dtype=torch.long)
    for i, seq in enumerate(seqs):
        tokens[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        positions[i, width - len(seq):] = torch.arange(len(seq))
    return tokens.to(device), positions.to(device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config (may be several, e.g. Llama 3) and the tokenizer."""
    ids = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is not None:
            ids += source if isinstance(source, list) else [source]
    return ids

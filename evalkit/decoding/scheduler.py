"""The one generation scheduler: every strategy, on every white-box backend, with continuous batching.

How a call runs:

* requests wait in a queue, longest prompt first;
* the cache has a fixed number of rows: ``batch_size`` requests times the
  rows each needs (its beams, or its samples). A request enters as soon as
  enough rows are free: its prompt is prefilled into one row and copied to
  its others, while the other rows keep decoding (a backend whose rows must
  start together, an encoder-decoder, gets a new wave when all are free);
* each step feeds every busy row one token (or, speculatively, the pending
  token and its drafts); a search turns the logits into tokens, and a
  finished request frees its rows for the next one at once;
* when nothing waits any more, idle rows are dropped so they cost nothing,
  unless the backend keeps its row count fixed (a captured CUDA graph).

The searches: :class:`SampleSearch` (greedy and sampling, one row per
sequence, optionally speculative: :mod:`evalkit.decoding.speculative`) and
:class:`BeamSearch` (transformers' ``_beam_search``, step for step).

Every response carries its timing (the wall time of each step split evenly
between the rows in it, the prefill between the prompts prefilled together)
and machine-independent counts (:class:`~evalkit.requests.Timing`): forward
passes, tokens through the layers, drafts proposed and accepted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.processors import History, needs_history, process
from evalkit.decoding.sampling import sample, sample_probs, uniform
from evalkit.decoding.speculative import LookupIndex, accept_greedy, accept_sampled
from evalkit.decoding.stops import cut_at_stop
from evalkit.errors import EvalkitError
from evalkit.requests import Generate, Response, Timing, request_key

OnDone = Callable[[dict[int, Response]], None]  # requests just finished: index in the call -> final response

_NEG = -1.0e9  # transformers' "finished / impossible" score offset
_REASONS = ("length", "eos", "stop")


@torch.no_grad()
def generate(
    backend: Any,
    tokenizer: Any,
    requests: Sequence[Generate],
    config: DecodingConfig,
    batch_size: int = 8,
    on_done: OnDone | None = None,
    draft: Any = None,
) -> list[Response]:
    """Generate one Response per request, in request order, under ``config``.

    ``backend`` implements :class:`~evalkit.models.base.Backend`; ``tokenizer``
    needs ``encode(text) -> list[int]`` and ``decode(ids, skip_special_tokens=True)``.
    ``batch_size`` counts requests; beams and ``num_return_sequences`` multiply
    the rows. ``draft`` is the draft model's Backend for ``draft``-speculative
    configs. ``on_done({index: response})`` is called as requests finish.
    """
    if batch_size < 1:
        raise EvalkitError(f"batch_size must be >= 1, got {batch_size}")
    requests = list(requests)
    if not requests:
        return []
    return Scheduler(backend, tokenizer, requests, config, batch_size, draft).run(on_done)


def _encode(tokenizer: Any, prompt: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise EvalkitError("a Generate request has an empty prompt (no tokens); give it some text")
    return ids


def _check_fits(backend: Any, prompts: list[list[int]], budgets: list[int], what: str = "the model") -> None:
    for budget in budgets:
        if budget < 1:
            raise EvalkitError(f"max_new_tokens must be >= 1, got {budget}")
    limit = getattr(backend, "max_length", None)
    if limit is None:
        return
    for ids, budget in zip(prompts, budgets):
        if len(ids) + budget > limit:
            raise EvalkitError(
                f"a prompt of {len(ids)} tokens plus max_new_tokens={budget} exceeds {what}'s context of "
                f"{limit} tokens; shorten the prompt or lower max_new_tokens"
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Scheduler:
    """Rows, queue, caches and bookkeeping for one ``generate`` call; the searches decide the tokens."""

    def __init__(
        self, backend: Any, tokenizer: Any, requests: list[Generate], config: DecodingConfig, batch_size: int,
        draft: Any,
    ) -> None:
        self.backend, self.tokenizer, self.config, self.draft = backend, tokenizer, config, draft
        self.device = torch.device(backend.device)
        self.prompts = [_encode(tokenizer, r.prompt) for r in requests]
        self.budgets = [config.max_new_tokens or r.max_new_tokens for r in requests]
        _check_fits(backend, self.prompts, self.budgets)
        self.stops = [tuple(r.stop) + config.stop for r in requests]
        self.keys = [request_key(r) for r in requests]
        self.eos = () if config.ignore_eos else tuple(backend.eos_token_ids)
        self.timings = [Timing(prompt_tokens=len(p)) for p in self.prompts]
        self.batch_size = batch_size
        self.draft_ratio = 0.0  # a draft forward's cost in target forwards (parameter ratio)
        self._check_speculative()
        self.search: SampleSearch | BeamSearch = BeamSearch(self) if config.is_beam else SampleSearch(self)
        self.max_len = max(len(p) + b for p, b in zip(self.prompts, self.budgets))
        self.cache: Any = None
        self.draft_cache: Any = None
        self.owner: list[int | None] = []  # the request each row serves (None: free)
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens in the cache, per row
        self.draft_lengths = torch.zeros(0, dtype=torch.long, device=self.device)
        self.history = History.empty(0, backend.vocab_size, self.device)

    def _check_speculative(self) -> None:
        config, draft = self.config, self.draft
        if not config.is_speculative:
            return
        if not getattr(self.backend, "ragged_rows", True):
            raise EvalkitError(
                f"decoding {config.label!r} is speculative, which needs a causal LM: rows of an encoder-decoder "
                "cannot take back rejected drafts; drop the lookup/draft part"
            )
        if config.speculative != "draft":
            return
        if draft is None:
            raise EvalkitError(
                f"decoding {config.label!r} drafts with a second model, but none was given: pass --draft-model NAME "
                f"(evaluate(draft_model=...)), a smaller model with the same tokenizer, or use "
                f"lookup{config.num_speculative_tokens}, which needs none"
            )
        if draft is self.backend and self.backend.static_rows:
            raise EvalkitError(
                f"decoding {config.label!r}: the draft model is the target object itself, whose captured decode step "
                "keeps a single cache; load the draft as its own model (--draft-model NAME loads a separate copy)"
            )
        _check_fits(draft, self.prompts, self.budgets, what="the draft model")
        self.draft_ratio = draft.num_parameters / self.backend.num_parameters

    # ------------------------------------------------------------------ the loop

    def run(self, on_done: OnDone | None) -> list[Response]:
        queue = deque(sorted(range(len(self.prompts)), key=lambda i: -len(self.prompts[i])))
        responses: list[Response | None] = [None] * len(self.prompts)
        while True:
            finished = self._admit(queue) if queue else {}
            busy = [owner for owner in self.owner if owner is not None]
            if busy:
                t0 = time.perf_counter()
                finished.update(self.search.step())
                _sync(self.device)
                share = (time.perf_counter() - t0) / len(busy)
                for request in busy:
                    self.timings[request].decode_s += share
            for i, response in finished.items():
                responses[i] = response
            if on_done is not None and finished:
                on_done(finished)
            if not queue and all(owner is None for owner in self.owner):
                return responses  # type: ignore[return-value]
            self._compact(queue)

    def _admit(self, queue: deque) -> dict[int, Response]:
        """Prefill waiting prompts into free rows; the search picks their first tokens."""
        per, ragged = self.search.rows_per_request, self._ragged()
        free = [r for r, owner in enumerate(self.owner) if owner is None]
        if len(free) == len(self.owner) and (self.cache is None or not ragged):  # the first rows, or a new wave
            waiting = min(self.batch_size, len(queue))
            # Rows that must start together are prefilled one per request and copied; others get all rows at once.
            self._new_caches(waiting * per, cache_rows=waiting * (1 if not ragged else per))
            free = list(range(len(self.owner)))
        elif len(free) < per or not ragged:
            return {}
        admitted = [queue.popleft() for _ in range(min(len(free) // per, len(queue)))]
        if not admitted:
            return {}
        groups = [free[k * per : (k + 1) * per] for k in range(len(admitted))]
        if ragged:
            lead = torch.tensor([g[0] for g in groups], device=self.device)
            copies = torch.arange(len(self.owner), device=self.device)
            for g in groups:
                copies[g[1:]] = g[0]
        else:
            lead = torch.arange(len(admitted), device=self.device)
            copies = lead.repeat_interleave(per)
        prompts = [self.prompts[i] for i in admitted]
        t0 = time.perf_counter()
        logits = self.backend.prefill(self.cache, lead, prompts)
        if self.draft is not None and self.config.speculative == "draft":
            self.draft.prefill(self.draft_cache, lead, prompts)
        rows = [r for g in groups for r in g]
        if per > 1:  # every row of a request starts as a copy of its prefilled first row
            self._copy_rows(copies)
        _sync(self.device)
        prefill_s = (time.perf_counter() - t0) / len(admitted)
        for i, g in zip(admitted, groups):
            for row in g:
                self.owner[row] = i
            timing = self.timings[i]
            timing.prefill_s += prefill_s
            timing.forwards += 1
            timing.forward_tokens += len(self.prompts[i])
            if self.draft_cache is not None:
                timing.draft_forwards += 1
                timing.draft_tokens += len(self.prompts[i])
        rows_t = torch.tensor(rows, device=self.device)
        lengths = torch.tensor([len(self.prompts[i]) for i in admitted for _ in range(per)], device=self.device)
        self.lengths[rows_t] = lengths
        self.draft_lengths[rows_t] = lengths
        self.history.reset(rows, [self.prompts[i] for i in admitted for _ in range(per)])
        return self.search.admit(admitted, groups, logits)

    def _ragged(self) -> bool:
        return getattr(self.backend, "ragged_rows", True)

    def _new_caches(self, rows: int, cache_rows: int) -> None:
        """Bookkeeping for ``rows`` rows; the caches start with ``cache_rows`` (copied up to ``rows`` at admission)."""
        self.cache = self.backend.new_cache(cache_rows, self.max_len)
        if self.config.speculative == "draft":
            self.draft_cache = self.draft.new_cache(cache_rows, self.max_len)
        self.owner = [None] * rows
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.draft_lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.history = History.empty(rows, self.backend.vocab_size, self.device)
        self.search.resize(rows)

    def _compact(self, queue: deque) -> None:
        """Drop idle rows when nothing waits for them (or the backend starts rows in waves)."""
        if queue and self._ragged():
            return
        if self.backend.static_rows or (self.draft_cache is not None and self.draft.static_rows):
            return
        keep = [r for r, owner in enumerate(self.owner) if owner is not None]
        if not keep or len(keep) == len(self.owner):
            return
        index = torch.tensor(keep, device=self.device)
        self._copy_rows(index)
        self.owner = [self.owner[r] for r in keep]
        self.search.renumber(keep)

    def _copy_rows(self, index: torch.Tensor) -> None:
        """Row ``i`` becomes old row ``index[i]``: caches, lengths and history alike."""
        self.cache = self.backend.reorder_cache(self.cache, index)
        if self.draft_cache is not None:
            self.draft_cache = self.draft.reorder_cache(self.draft_cache, index)
        self.lengths = self.lengths[index]
        self.draft_lengths = self.draft_lengths[index]
        self.history = self.history.select(index)

    # ------------------------------------------------------------------ model calls, counted

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """The target model over every row; each row's request is charged its pass and its tokens."""
        logits = self.backend.forward(tokens, positions, self.cache, last_only=last_only)
        self._charge(positions, "forwards", "forward_tokens")
        return logits

    def draft_forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The draft model over every row; next-token logits ``[rows, vocab]``."""
        logits = self.draft.forward(tokens, positions, self.draft_cache, last_only=True)[:, -1]
        self._charge(positions, "draft_forwards", "draft_tokens")
        return logits

    def _charge(self, positions: torch.Tensor, passes: str, tokens: str) -> None:
        """Each row with a real token in ``positions`` adds one pass and its tokens to its request's timing."""
        for row, n in enumerate((positions >= 0).sum(dim=1).tolist()):
            if n:
                timing = self.timings[self.owner[row]]  # type: ignore[index]
                setattr(timing, passes, getattr(timing, passes) + 1)
                setattr(timing, tokens, getattr(timing, tokens) + n)

    def processed(self, raw: torch.Tensor, history: History | None) -> torch.Tensor:
        return process(raw, self.config, history, tuple(self.backend.eos_token_ids))

    def finish_reason(self, request: int, tokens: list[int]) -> str | None:
        """Why a sequence ends after its last token (EOS, then a stop string, then the budget), or None."""
        if tokens[-1] in self.eos:
            return "eos"
        if self.stops[request] and cut_at_stop(self.tokenizer, tokens, self.stops[request])[1]:
            return "stop"
        if len(tokens) >= self.budgets[request]:
            return "length"
        return None

    def respond(self, request: int, sequences: list[tuple[list[int], list[float], str]]) -> Response:
        """The request's Response: its first sequence, the others as alternatives, the timing on the first."""
        out = []
        for tokens, logprobs, reason in sequences:
            text, _ = cut_at_stop(self.tokenizer, tokens, self.stops[request])
            out.append(Response(text=text, token_ids=list(tokens), token_logprobs=list(logprobs),
                                logprob=sum(logprobs), finish_reason=reason))
        timing = self.timings[request]
        timing.generated_tokens = sum(len(tokens) for tokens, _, _ in sequences)
        timing.cost = timing.forwards + timing.draft_forwards * self.draft_ratio
        out[0].timing = timing
        out[0].alternatives = out[1:]
        return out[0]


@dataclass
class _Sequence:
    """One sampled (or greedy) sequence, living in one row."""

    request: int
    sample: int
    tokens: list[int]
    logprobs: list[float]
    lookup: LookupIndex | None


class SampleSearch:
    """Greedy and sampling, one row per sequence, ``num_return_sequences`` rows per request.

    The last chosen token of each row is *pending*: in the sequence, not yet
    in the cache. A step feeds it and picks the next; a speculative step feeds
    it with up to K drafts and keeps the accepted ones (see
    :mod:`evalkit.decoding.speculative`).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        config = scheduler.config
        self.rows_per_request = config.num_return_sequences
        self.uses_history = needs_history(config)
        self.rows: list[_Sequence | None] = []
        self.pending = torch.zeros(0, dtype=torch.long, device=scheduler.device)
        self.done: dict[int, dict[int, tuple[list[int], list[float], str]]] = {}

    def resize(self, rows: int) -> None:
        self.rows = [None] * rows
        self.pending = torch.zeros(rows, dtype=torch.long, device=self.s.device)

    def renumber(self, keep: list[int]) -> None:
        self.rows = [self.rows[r] for r in keep]
        self.pending = self.pending[torch.tensor(keep, device=self.s.device)]

    def admit(self, requests: list[int], groups: list[list[int]], logits: torch.Tensor) -> dict[int, Response]:
        config = self.s.config
        for i, group in zip(requests, groups):
            self.done[i] = {}
            for j, row in enumerate(group):
                lookup = LookupIndex(config.lookup_max_ngram, config.lookup_min_ngram)
                self.rows[row] = _Sequence(i, j, [], [], lookup if config.speculative == "lookup" else None)
        rows = [row for group in groups for row in group]
        return self._pick(logits.repeat_interleave(self.rows_per_request, dim=0), rows)

    def step(self) -> dict[int, Response]:
        busy = [r for r, seq in enumerate(self.rows) if seq is not None]
        if self.s.config.is_speculative:
            drafts, draft_probs = self._drafts(busy)
            if drafts.shape[1]:
                return self._verify(busy, drafts, draft_probs)
        rows_t = torch.tensor(busy, device=self.s.device)
        positions = torch.full_like(self.pending, -1)
        positions[rows_t] = self.s.lengths[rows_t]
        logits = self.s.forward(self.pending[:, None], positions[:, None], last_only=True)[:, -1]
        self.s.lengths[rows_t] += 1
        return self._pick(logits[rows_t], busy)

    def _pick(self, raw: torch.Tensor, rows: list[int]) -> dict[int, Response]:
        """Choose each row's next token from its logits ``raw`` ``[len(rows), vocab]``."""
        config, s = self.s.config, self.s
        rows_t = torch.tensor(rows, device=s.device)
        scores = s.processed(raw.float(), s.history.select(rows_t) if self.uses_history else None)
        if config.do_sample:
            u = [uniform(config.seed, s.keys[seq.request], seq.sample, len(seq.tokens))
                 for seq in (self.rows[r] for r in rows)]  # type: ignore[union-attr]
            chosen = sample(scores, torch.tensor(u, dtype=torch.float64))
        else:
            chosen = scores.argmax(dim=-1)
        logprobs = torch.log_softmax(raw.float(), dim=-1).gather(1, chosen[:, None])[:, 0]
        self._append_history(rows_t, [chosen])
        self.pending[rows_t] = chosen
        finished: dict[int, Response] = {}
        for row, token, lp in zip(rows, chosen.tolist(), logprobs.tolist()):
            self._extend(row, [token], [lp], finished)
        return finished

    def _append_history(self, rows_t: torch.Tensor, columns: list[torch.Tensor], counts: torch.Tensor | None = None) -> None:
        """Rows ``rows_t`` gain the tokens ``columns[k][i]`` for ``k < counts[i]`` (all columns by default)."""
        for k, column in enumerate(columns):
            keep = None if counts is None else counts > k
            self.s.history.append_rows(rows_t if keep is None else rows_t[keep], column if keep is None else column[keep])

    def _extend(self, row: int, tokens: list[int], logprobs: list[float], finished: dict[int, Response]) -> None:
        """Append tokens to the row's sequence, one at a time; at the first end, the row is freed."""
        seq = self.rows[row]
        assert seq is not None
        for token, lp in zip(tokens, logprobs):
            seq.tokens.append(token)
            seq.logprobs.append(lp)
            reason = self.s.finish_reason(seq.request, seq.tokens)
            if reason is not None:
                self.rows[row] = None
                self.s.owner[row] = None
                done = self.done[seq.request]
                done[seq.sample] = (seq.tokens, seq.logprobs, reason)
                if len(done) == self.rows_per_request:
                    finished[seq.request] = self.s.respond(seq.request, [done[j] for j in sorted(done)])
                    del self.done[seq.request]
                return

    # ------------------------------------------------------------------ speculative

    def _sequence(self, row: int) -> list[int]:
        seq = self.rows[row]
        assert seq is not None
        return self.s.prompts[seq.request] + seq.tokens

    def _drafts(self, busy: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft tokens ``[len(busy), K']`` (-1 where a row has fewer) and, for a sampling draft model, their
        distributions ``[len(busy), K', vocab]``. A row never drafts past its token budget."""
        s, k = self.s, self.s.config.num_speculative_tokens
        room = [min(k, s.budgets[self.rows[r].request] - len(self.rows[r].tokens) - 1) for r in busy]  # type: ignore[union-attr]
        if s.config.speculative == "lookup":
            proposals = [self.rows[r].lookup.propose(self._sequence(r), n) for r, n in zip(busy, room)]  # type: ignore[union-attr]
            width = max(map(len, proposals))
            drafts = torch.full((len(busy), width), -1, dtype=torch.long)
            for i, p in enumerate(proposals):
                drafts[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            return drafts.to(s.device), None
        if max(room) < 1:
            return torch.zeros(len(busy), 0, dtype=torch.long, device=s.device), None
        return self._model_drafts(busy, room)

    def _model_drafts(self, busy: list[int], room: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """K steps of the draft model: first the tokens its cache lacks (the pending one, and the last
        accepted draft after a full acceptance), then each draft it proposes."""
        s, config = self.s, self.s.config
        k = max(room)
        rows_t = torch.tensor(busy, device=s.device)
        feeds = [self._sequence(r)[int(s.draft_lengths[r]):] for r in busy]
        width = max(map(len, feeds))
        tokens = torch.zeros(len(self.rows), width, dtype=torch.long)
        positions = torch.full((len(self.rows), width), -1, dtype=torch.long)
        for r, feed in zip(busy, feeds):  # right-aligned, so every row's last column is real
            tokens[r, width - len(feed) :] = torch.tensor(feed)
            positions[r, width - len(feed) :] = torch.arange(len(feed)) + int(s.draft_lengths[r])
        logits = s.draft_forward(tokens.to(s.device), positions.to(s.device))
        s.draft_lengths[rows_t] += torch.tensor([len(f) for f in feeds], device=s.device)
        history = s.history.select(rows_t) if self.uses_history else None
        drafts, dists = [], []
        for step in range(k):
            scores = s.processed(self._to_target_vocab(logits[rows_t].float()), history)
            if config.do_sample:
                q = torch.softmax(scores, dim=-1)
                u = [uniform(config.seed, s.keys[self.rows[r].request], self.rows[r].sample,  # type: ignore[union-attr]
                             f"draft:{len(self.rows[r].tokens) + step}") for r in busy]  # type: ignore[union-attr]
                chosen = sample_probs(q, torch.tensor(u, dtype=torch.float64))
                dists.append(q)
            else:
                chosen = scores.argmax(dim=-1)
            drafts.append(chosen)
            if history is not None:
                history.append(chosen)
            if step + 1 < k:
                tokens = torch.zeros(len(self.rows), 1, dtype=torch.long, device=s.device)
                positions = torch.full((len(self.rows), 1), -1, dtype=torch.long, device=s.device)
                tokens[rows_t, 0] = chosen
                positions[rows_t, 0] = s.draft_lengths[rows_t]
                logits = s.draft_forward(tokens, positions)
                s.draft_lengths[rows_t] += 1
        out = torch.stack(drafts, dim=1)
        out[torch.arange(k, device=s.device)[None, :] >= torch.tensor(room, device=s.device)[:, None]] = -1
        return out, torch.stack(dists, dim=1) if dists else None

    def _to_target_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """A draft model's logits over the target's vocabulary size (embedding matrices are often padded)."""
        vocab = self.s.backend.vocab_size
        if logits.shape[-1] == vocab:
            return logits
        if logits.shape[-1] > vocab:
            return logits[..., :vocab]
        return torch.cat([logits, logits.new_full((*logits.shape[:-1], vocab - logits.shape[-1]), -float("inf"))], -1)

    def _verify(self, busy: list[int], drafts: torch.Tensor, draft_probs: torch.Tensor | None) -> dict[int, Response]:
        """Feed each row's pending token and drafts in one pass; keep the accepted drafts and one more token."""
        s, config = self.s, self.s.config
        rows_t = torch.tensor(busy, device=s.device)
        n_drafts = (drafts >= 0).sum(dim=1)
        width = drafts.shape[1]
        tokens = torch.zeros(len(self.rows), 1 + width, dtype=torch.long, device=s.device)
        positions = torch.full_like(tokens, -1)
        tokens[rows_t, 0] = self.pending[rows_t]
        tokens[rows_t, 1:] = drafts.clamp(min=0)
        steps = torch.arange(1 + width, device=s.device)[None, :]
        positions[rows_t] = torch.where(steps <= n_drafts[:, None], s.lengths[rows_t, None] + steps, -1)
        raw = s.forward(tokens, positions)[rows_t].float()  # [busy, 1 + width, vocab]
        scores = self._verify_scores(raw, rows_t, drafts, n_drafts)
        drafts = drafts.clamp(min=0)
        if config.do_sample:
            probs = torch.softmax(scores, dim=-1)
            u = [[uniform(config.seed, s.keys[self.rows[r].request], self.rows[r].sample,  # type: ignore[union-attr]
                          f"accept:{len(self.rows[r].tokens) + t}") for t in range(width)] for r in busy]  # type: ignore[union-attr]
            accepted, rejected, dist = accept_sampled(probs, drafts, n_drafts, draft_probs,
                                                      torch.tensor(u, dtype=torch.float64, device=s.device))
            u_next = []
            for r, a, rej in zip(busy, accepted.tolist(), rejected.tolist()):
                seq = self.rows[r]
                position = len(seq.tokens) + a  # type: ignore[union-attr]
                u_next.append(uniform(config.seed, s.keys[seq.request], seq.sample,  # type: ignore[union-attr]
                                      f"residual:{position}" if rej else position))
            following = sample_probs(dist, torch.tensor(u_next, dtype=torch.float64))
        else:
            accepted, following = accept_greedy(scores.argmax(dim=-1), drafts, n_drafts)
        new = torch.cat([drafts, torch.zeros_like(drafts[:, :1])], dim=1)
        new.scatter_(1, accepted[:, None], following[:, None])
        logprobs = torch.log_softmax(raw, dim=-1).gather(2, new[:, :, None])[:, :, 0]
        # The caches keep the pending token and the accepted drafts; the rest is taken back.
        draft_kept = None
        if s.draft_cache is not None:
            draft_kept = s.draft_lengths[rows_t] - (width - 1) + torch.minimum(accepted, torch.tensor(width - 1))
        s.lengths[rows_t] += 1 + accepted
        s.backend.truncate(s.cache, s.lengths)
        if draft_kept is not None:
            s.draft_lengths[rows_t] = draft_kept
            s.draft.truncate(s.draft_cache, s.draft_lengths)
        self.pending[rows_t] = following
        self._append_history(rows_t, list(new.T), counts=accepted + 1)
        finished: dict[int, Response] = {}
        for i, (row, a, n) in enumerate(zip(busy, accepted.tolist(), n_drafts.tolist())):
            timing = s.timings[self.rows[row].request]  # type: ignore[union-attr]
            timing.drafted += n
            timing.accepted += a
            self._extend(row, new[i, : a + 1].tolist(), logprobs[i, : a + 1].tolist(), finished)
        return finished

    def _verify_scores(self, raw: torch.Tensor, rows_t: torch.Tensor, drafts: torch.Tensor, n_drafts: torch.Tensor) -> torch.Tensor:
        """The processed scores at each verified position, each with the history its drafts would have made."""
        busy, steps, vocab = raw.shape
        history = None
        if self.uses_history:  # virtual row (i, t): row i's history plus its first t drafts
            history = self.s.history.select(rows_t.repeat_interleave(steps))
            depth = torch.arange(steps, device=raw.device).repeat(busy)
            for t in range(1, steps):
                where = (depth >= t) & (n_drafts >= t).repeat_interleave(steps)
                history.append(drafts[:, t - 1].clamp(min=0).repeat_interleave(steps), where)
        return self.s.processed(raw.reshape(busy * steps, vocab), history).view(busy, steps, vocab)


@dataclass
class _Beams:
    """The state of the requests being beam-searched, one entry per request (in tensor order)."""

    items: list[int]  # request indices
    rows: list[list[int]]  # each request's cache rows, one per beam
    cur: torch.Tensor  # [n] tokens generated so far
    budgets: torch.Tensor  # [n]
    run_seq: torch.Tensor  # [n, beams, width] running beams' tokens
    run_lp: torch.Tensor  # [n, beams, width] their raw logprobs
    run_scores: torch.Tensor  # [n, beams]
    fin_seq: torch.Tensor  # finished hypotheses, as transformers keeps them
    fin_lp: torch.Tensor
    fin_scores: torch.Tensor
    fin_len: torch.Tensor
    fin_reason: torch.Tensor
    is_fin: torch.Tensor
    improvable: torch.Tensor  # [n, 1]

    @classmethod
    def start(cls, items: list[int], rows: list[list[int]], budgets: list[int], beams: int, width: int,
              device: torch.device) -> _Beams:
        n = len(items)
        run_scores = torch.zeros(n, beams, dtype=torch.float32, device=device)
        run_scores[:, 1:] = _NEG
        seq = torch.zeros(n, beams, width, dtype=torch.long, device=device)
        lp = torch.zeros(n, beams, width, dtype=torch.float32, device=device)
        return cls(
            items=list(items), rows=[list(r) for r in rows],
            cur=torch.zeros(n, dtype=torch.long, device=device),
            budgets=torch.tensor(budgets, device=device),
            run_seq=seq, run_lp=lp, run_scores=run_scores,
            fin_seq=seq.clone(), fin_lp=lp.clone(),
            fin_scores=torch.full((n, beams), _NEG, dtype=torch.float32, device=device),
            fin_len=torch.zeros(n, beams, dtype=torch.long, device=device),
            fin_reason=torch.zeros(n, beams, dtype=torch.long, device=device),
            is_fin=torch.zeros(n, beams, dtype=torch.bool, device=device),
            improvable=torch.ones(n, 1, dtype=torch.bool, device=device),
        )

    def _tensors(self) -> list[str]:
        return [f.name for f in fields(self) if f.name not in ("items", "rows")]

    def keep(self, index: list[int]) -> _Beams:
        at = torch.tensor(index, dtype=torch.long, device=self.cur.device)
        kept = {name: getattr(self, name)[at] for name in self._tensors()}
        return _Beams(items=[self.items[a] for a in index], rows=[self.rows[a] for a in index], **kept)

    def cat(self, other: _Beams) -> _Beams:
        joined = {name: torch.cat([getattr(self, name), getattr(other, name)]) for name in self._tensors()}
        return _Beams(items=self.items + other.items, rows=self.rows + other.rows, **joined)


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick beams: ``tensor`` is ``[items, beams, ...]``, ``index`` is ``[items, k]``."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _divide(values: torch.Tensor, by: list[float]) -> torch.Tensor:
    """``values[a] / by[a]`` per item, each with a Python scalar (so the arithmetic is transformers' to the bit)."""
    if len(set(by)) == 1:
        return values / by[0]
    out = torch.empty_like(values)
    divisors = torch.tensor(by, device=values.device)
    for value in set(by):
        where = divisors == value
        out[where] = values[where] / value
    return out


class BeamSearch:
    """Beam search as transformers' ``_beam_search`` (4.57), step for step, with requests entering and
    leaving the batch as rows free up.

    The same top-2k candidate selection, the same bookkeeping of finished
    hypotheses, the same early-stopping heuristic, with the processors applied
    to log-probabilities as transformers does in beam search. A request whose
    hypotheses can no longer change leaves at once, and its rows take the next.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        config = scheduler.config
        self.rows_per_request = config.num_beams
        self.k = max(2, 1 + len(scheduler.eos)) * config.num_beams
        self.width = max(scheduler.budgets)
        self.uses_history = needs_history(config)
        self.state = _Beams.start([], [], [], config.num_beams, self.width, scheduler.device)
        self.pending = torch.zeros(0, dtype=torch.long, device=scheduler.device)

    def resize(self, rows: int) -> None:
        self.pending = torch.zeros(rows, dtype=torch.long, device=self.s.device)

    def renumber(self, keep: list[int]) -> None:
        new = {old: i for i, old in enumerate(keep)}
        self.state.rows = [[new[r] for r in rows] for rows in self.state.rows]
        self.pending = self.pending[torch.tensor(keep, device=self.s.device)]

    def admit(self, requests: list[int], groups: list[list[int]], logits: torch.Tensor) -> dict[int, Response]:
        s = self.s
        fresh = _Beams.start(requests, groups, [s.budgets[i] for i in requests], self.rows_per_request,
                             self.width, s.device)
        # A request's rows are copies of one prompt: its first step needs no reordering.
        return self._advance(fresh, logits.repeat_interleave(self.rows_per_request, dim=0), joined=False)

    def step(self) -> dict[int, Response]:
        s = self.s
        rows_t = torch.tensor([r for rows in self.state.rows for r in rows], device=s.device)
        positions = torch.full_like(self.pending, -1)
        positions[rows_t] = s.lengths[rows_t]
        logits = s.forward(self.pending[:, None], positions[:, None], last_only=True)[:, -1]
        s.lengths[rows_t] += 1
        return self._advance(self.state, logits[rows_t], joined=True)

    def _advance(self, beams: _Beams, logits: torch.Tensor, joined: bool) -> dict[int, Response]:
        """One selection step for ``beams``; finished requests leave, the rest feed their beams' last tokens."""
        s = self.s
        done, src = self._select(beams, logits)
        finished: dict[int, Response] = {}
        keep = []
        for a, is_done in enumerate(done.tolist()):
            if is_done:
                finished[beams.items[a]] = self._respond(beams, a)
                for row in beams.rows[a]:
                    s.owner[row] = None
            else:
                keep.append(a)
        kept = beams.keep(keep)
        src = src[torch.tensor(keep, dtype=torch.long, device=s.device)]
        if keep:
            if joined:  # beams follow their parents: one reorder of the whole cache
                index = torch.arange(len(s.owner), device=s.device)
                rows = torch.tensor(kept.rows, device=s.device)  # [n, beams]
                index[rows.flatten()] = rows.gather(1, src).flatten()
                if not bool((index == torch.arange(len(s.owner), device=s.device)).all()):
                    s._copy_rows(index)
            rows_t = torch.tensor([r for rows in kept.rows for r in rows], device=s.device)
            next_tokens = kept.run_seq.gather(2, (kept.cur - 1).view(-1, 1, 1).expand(-1, self.rows_per_request, 1))
            self.pending[rows_t] = next_tokens.flatten()
            s.history.append_rows(rows_t, next_tokens.flatten())
        self.state = kept if joined else self.state.cat(kept)
        return finished

    def _select(self, b: _Beams, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' beam step for every request of ``b`` (updated in place); returns which are done
        and, per request, the parent beam of each new running beam."""
        s, config = self.s, self.s.config
        nb, lp, es = config.num_beams, config.length_penalty, config.early_stopping
        n, vocab = len(b.items), logits.size(-1)
        rows_t = torch.tensor([r for rows in b.rows for r in rows], device=s.device)
        logp = torch.log_softmax(logits.float(), dim=-1)
        scores = s.processed(logp, s.history.select(rows_t) if self.uses_history else None)
        acc = (scores.view(n, nb, vocab) + b.run_scores[:, :, None]).view(n, nb * vocab)
        topk_lp, topk_idx = torch.topk(acc, self.k)
        src, token = topk_idx // vocab, topk_idx % vocab
        at = b.cur.view(n, 1, 1).expand(n, self.k, 1)
        cand_seq = _gather(b.run_seq, src)
        cand_seq.scatter_(2, at, token[:, :, None])
        cand_lp = _gather(b.run_lp, src)
        cand_lp.scatter_(2, at, logp.view(n, nb * vocab).gather(1, topk_idx)[:, :, None])
        length = b.cur + 1
        lengths = length.tolist()

        hits_eos = torch.isin(token, torch.tensor(s.eos, dtype=torch.long, device=s.device))
        hits_stop = self._stop_hits(b, cand_seq, lengths)
        hits = hits_eos | hits_stop | (length[:, None] >= b.budgets[:, None])
        reason = torch.where(hits_eos, 1, torch.where(hits_stop, 2, 0))

        # Next running beams: the best candidates that did not just finish.
        running = topk_lp + hits.to(torch.float32) * _NEG
        keep_beams = torch.topk(running, k=nb)[1]
        b.run_seq, b.run_lp = _gather(cand_seq, keep_beams), _gather(cand_lp, keep_beams)
        b.run_scores, run_src = _gather(running, keep_beams), _gather(src, keep_beams)

        # Finished hypotheses: only the top nb candidates may finish, scored with the length penalty.
        just = hits & (torch.arange(self.k, device=s.device) < nb)[None, :]
        final = _divide(topk_lp, [ln ** lp for ln in lengths])
        final += (b.is_fin.all(dim=-1, keepdim=True) & (es is True)).to(torch.float32) * _NEG
        final += (~b.improvable).to(torch.float32) * _NEG
        final += (~just) * _NEG
        best = torch.topk(torch.cat((b.fin_scores, final), dim=1), k=nb)[1]
        b.fin_scores = _gather(torch.cat((b.fin_scores, final), dim=1), best)
        b.fin_seq = _gather(torch.cat((b.fin_seq, cand_seq), dim=1), best)
        b.fin_lp = _gather(torch.cat((b.fin_lp, cand_lp), dim=1), best)
        b.fin_len = _gather(torch.cat((b.fin_len, length[:, None].expand_as(reason)), dim=1), best)
        b.fin_reason = _gather(torch.cat((b.fin_reason, reason), dim=1), best)
        b.is_fin = _gather(torch.cat((b.is_fin, just), dim=1), best)
        b.cur = length

        # transformers' early-stopping heuristic: can the best running beam still beat the worst finished one?
        if es == "never" and lp > 0.0:
            best_length = [budget ** lp for budget in b.budgets.tolist()]
        else:
            best_length = [ln ** lp for ln in lengths]
        best_possible = _divide(b.run_scores[:, :1], best_length)
        worst_finished = torch.where(b.is_fin, torch.min(b.fin_scores, dim=1, keepdim=True)[0], _NEG)
        b.improvable = b.improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        done = ~b.improvable[:, 0] | (b.is_fin.all(dim=-1) & (es is True)) | (b.cur >= b.budgets)
        return done, run_src

    def _stop_hits(self, b: _Beams, cand_seq: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """[items, candidates] bool: which candidate sequences now contain one of their request's stop strings."""
        s = self.s
        hits = torch.zeros(cand_seq.shape[:2], dtype=torch.bool)
        for a, request in enumerate(b.items):
            if s.stops[request]:
                for c, tokens in enumerate(cand_seq[a, :, : lengths[a]].tolist()):
                    hits[a, c] = cut_at_stop(s.tokenizer, tokens, s.stops[request])[1]
        return hits.to(cand_seq.device)

    def _respond(self, b: _Beams, a: int) -> Response:
        lengths, reasons = b.fin_len[a].tolist(), b.fin_reason[a].tolist()
        sequences = [
            (b.fin_seq[a, j, : lengths[j]].tolist(), b.fin_lp[a, j, : lengths[j]].tolist(), _REASONS[reasons[j]])
            for j in range(self.s.config.num_return_sequences)
        ]
        return self.s.respond(b.items[a], sequences)

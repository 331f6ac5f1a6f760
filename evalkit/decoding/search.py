"""Search loops over any :class:`~evalkit.models.base.Backend`: greedy, sampling and beam search.

Every white-box adapter hands its Backend to :func:`generate`, so a strategy is
one algorithm whatever the model runs on. Requests are batched (longest
prompts together, to waste little padding), prompts are left-padded with
position -1, the prompt is prefilled once, and rows leave the batch as soon as
they finish: ``reorder_cache`` drops them, so a finished row costs nothing more.

Beam search reproduces transformers' ``_beam_search`` (4.57) step for step:
the same top-2k candidate selection, the same bookkeeping of finished
hypotheses, the same early-stopping heuristic, with the processors applied to
log-probabilities as transformers does in beam search. The one difference is
that a request whose hypotheses can no longer change leaves the batch instead
of being carried along until every request is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.processors import History, process
from evalkit.decoding.sampling import sample, uniform
from evalkit.decoding.stops import cut_at_stop
from evalkit.errors import EvalkitError
from evalkit.requests import Generate, Response, Timing, request_key

_NEG = -1.0e9  # transformers' "finished / impossible" score offset
_REASONS = ("length", "eos", "stop")


@torch.no_grad()
def generate(
    backend: Any,
    tokenizer: Any,
    requests: Sequence[Generate],
    config: DecodingConfig,
    batch_size: int = 8,
    on_done: Callable[[dict[int, Response]], None] | None = None,
) -> list[Response]:
    """Generate one Response per request, in request order, under ``config``.

    ``tokenizer`` needs ``encode(text) -> list[int]`` and ``decode(ids, skip_special_tokens=True)``.
    ``batch_size`` counts requests; beam search and ``num_return_sequences`` multiply the rows.
    If the backend has ``prefill(cache, prompt_ids) -> [batch, vocab]`` (seq2seq models), it
    replaces the causal prefill; ``prompt_ids`` is left-padded with -1.
    ``Response.timing`` splits the batch's wall time between its requests (evenly for the
    prefill, per step among the rows still running for decoding), so summed over requests it
    is the real cost; a request's timing covers all of its sequences (alternatives carry none).
    ``on_done({index: response})`` is called with each batch's requests as it finishes.
    """
    if batch_size < 1:
        raise EvalkitError(f"batch_size must be >= 1, got {batch_size}")
    requests = list(requests)
    prompts = [_encode(tokenizer, r.prompt) for r in requests]
    budgets = [config.max_new_tokens or r.max_new_tokens for r in requests]
    _check_fits(backend, prompts, budgets)
    run = _beam_batch if config.is_beam else _sample_batch
    order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
    responses: list[Response | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = _Batch(
            backend=backend,
            tokenizer=tokenizer,
            config=config,
            keys=[request_key(requests[i]) for i in chosen],
            prompts=[prompts[i] for i in chosen],
            budgets=[budgets[i] for i in chosen],
            stops=[tuple(requests[i].stop) + config.stop for i in chosen],
        )
        for i, response in zip(chosen, run(batch)):
            responses[i] = response
        if on_done is not None:
            on_done({i: responses[i] for i in chosen})
    return responses  # type: ignore[return-value]


@dataclass
class _Batch:
    backend: Any
    tokenizer: Any
    config: DecodingConfig
    keys: list[str]
    prompts: list[list[int]]
    budgets: list[int]
    stops: list[tuple[str, ...]]

    @property
    def device(self) -> torch.device:
        return torch.device(self.backend.device)

    @property
    def eos(self) -> tuple[int, ...]:
        """The EOS ids that end a sequence (none when the config ignores EOS)."""
        return () if self.config.ignore_eos else tuple(self.backend.eos_token_ids)

    def text(self, tokens: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
        """The decoded output cut before the first stop string, and whether one was found."""
        return cut_at_stop(self.tokenizer, tokens, stops)


def _encode(tokenizer: Any, prompt: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise EvalkitError("a Generate request has an empty prompt (no tokens); give it some text")
    return ids


def _check_fits(backend: Any, prompts: list[list[int]], budgets: list[int]) -> None:
    for budget in budgets:
        if budget < 1:
            raise EvalkitError(f"max_new_tokens must be >= 1, got {budget}")
    limit = getattr(backend, "max_length", None)
    if limit is None:
        return
    for ids, budget in zip(prompts, budgets):
        if len(ids) + budget > limit:
            raise EvalkitError(
                f"a prompt of {len(ids)} tokens plus max_new_tokens={budget} exceeds the model's context of "
                f"{limit} tokens; shorten the prompt or lower max_new_tokens"
            )


def _share_time(seconds, rows, since: float) -> float:
    """Split the time since ``since`` evenly among the rows that shared the step; return now."""
    now = time.perf_counter()
    for row in rows:
        seconds[row] += (now - since) / len(rows)
    return now


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill(batch: _Batch) -> tuple[Any, torch.Tensor]:
    """Prefill the (left-padded) prompts; returns the cache and the next-token logits ``[batch, vocab]``."""
    device, prompts = batch.device, batch.prompts
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), -1, dtype=torch.long)
    positions = torch.full((len(prompts), width), -1, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        positions[row, width - len(p):] = torch.arange(len(p))
    ids, positions = ids.to(device), positions.to(device)
    cache = batch.backend.new_cache(len(prompts), width + max(batch.budgets))
    if hasattr(batch.backend, "prefill"):
        logits = batch.backend.prefill(cache, ids)
    else:
        logits = batch.backend.forward(ids.clamp(min=0), positions, cache, last_only=True)[:, -1]
    return cache, logits


def _step(batch: _Batch, cache: Any, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Feed one token per row; returns the next-token logits ``[rows, vocab]``."""
    return batch.backend.forward(tokens[:, None], positions[:, None], cache, last_only=True)[:, -1]


def _sample_batch(batch: _Batch) -> list[Response]:
    """Greedy (argmax) or sampling; each row leaves the batch when it hits EOS, a stop string or its budget."""
    config, device = batch.config, batch.device
    n = config.num_return_sequences
    row_request = [r for r in range(len(batch.prompts)) for _ in range(n)]
    row_sample = [j for _ in batch.prompts for j in range(n)]
    t0 = time.perf_counter()
    cache, logits = _prefill(batch)
    if n > 1:
        expand = torch.tensor(row_request, device=device)
        cache = batch.backend.reorder_cache(cache, expand)
        logits = logits[expand]
    _sync(device)
    prefill_s = time.perf_counter() - t0

    history = History.start([batch.prompts[r] for r in row_request], logits.size(-1), device)
    active = list(range(len(row_request)))
    tokens: list[list[int]] = [[] for _ in row_request]
    logprobs: list[list[float]] = [[] for _ in row_request]
    reasons: list[str] = ["length"] * len(row_request)
    decode_s = [0.0] * len(row_request)
    step, tick = 0, time.perf_counter()
    while True:
        raw = logits.float()
        scores = process(raw, config, history, tuple(batch.backend.eos_token_ids))
        if config.do_sample:
            u = [uniform(config.seed, batch.keys[row_request[r]], row_sample[r], step) for r in active]
            chosen = sample(scores, torch.tensor(u, dtype=torch.float64))
        else:
            chosen = scores.argmax(dim=-1)
        chosen_logprob = torch.log_softmax(raw, dim=-1).gather(1, chosen[:, None])[:, 0]
        history.append(chosen)
        keep = []
        for i, (row, token, lp) in enumerate(zip(active, chosen.tolist(), chosen_logprob.tolist())):
            tokens[row].append(token)
            logprobs[row].append(lp)
            reason = _finish_reason(batch, tokens[row], row_request[row])
            if reason is None:
                keep.append(i)
            else:
                reasons[row] = reason
        if keep:
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache = batch.backend.reorder_cache(cache, index)
                history = history.select(index)
                chosen = chosen[index]
            positions = torch.tensor([len(batch.prompts[row_request[active[i]]]) + step for i in keep], device=device)
            logits = _step(batch, cache, chosen, positions)
            _sync(device)
        tick = _share_time(decode_s, active, tick)
        if not keep:
            break
        active = [active[i] for i in keep]
        step += 1

    responses = []
    for r in range(len(batch.prompts)):
        rows = [row for row in range(len(row_request)) if row_request[row] == r]
        seqs = [_response(batch, tokens[row], logprobs[row], reasons[row], r) for row in rows]
        seqs[0].timing = Timing(
            prefill_s=prefill_s / len(batch.prompts),
            decode_s=sum(decode_s[row] for row in rows),
            prompt_tokens=len(batch.prompts[r]),
            generated_tokens=sum(len(tokens[row]) for row in rows),
        )
        seqs[0].alternatives = seqs[1:]
        responses.append(seqs[0])
    return responses


def _finish_reason(batch: _Batch, tokens: list[int], request: int) -> str | None:
    if tokens[-1] in batch.eos:
        return "eos"
    if batch.stops[request] and batch.text(tokens, batch.stops[request])[1]:
        return "stop"
    if len(tokens) >= batch.budgets[request]:
        return "length"
    return None


def _response(batch: _Batch, tokens: list[int], logprobs: list[float], reason: str, request: int) -> Response:
    text, _ = batch.text(tokens, batch.stops[request])
    return Response(text=text, token_ids=list(tokens), token_logprobs=list(logprobs), finish_reason=reason)


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick beams: ``tensor`` is ``[items, beams, ...]``, ``index`` is ``[items, k]``."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _per_item(values: list[float], device: torch.device) -> float | torch.Tensor:
    """A Python scalar when every item agrees (so the arithmetic is transformers' to the bit), else ``[items, 1]``."""
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _beam_batch(batch: _Batch) -> list[Response]:
    """Beam search over a batch of requests, as transformers' ``_beam_search``; see the module docstring."""
    config, device = batch.config, batch.device
    nb, lp, es = config.num_beams, config.length_penalty, config.early_stopping
    eos = torch.tensor(batch.eos, dtype=torch.long, device=device)
    k = max(2, 1 + len(batch.eos)) * nb
    top_beam_mask = torch.arange(k, device=device) < nb
    width = max(batch.budgets)
    n_items = len(batch.prompts)

    t0 = time.perf_counter()
    cache, logits = _prefill(batch)
    expand = torch.arange(n_items, device=device).repeat_interleave(nb)
    cache = batch.backend.reorder_cache(cache, expand)
    logits = logits[expand]
    _sync(device)
    prefill_s = time.perf_counter() - t0
    vocab = logits.size(-1)

    history = History.start([batch.prompts[r] for r in expand.tolist()], vocab, device)
    items = list(range(n_items))  # the requests still searching, in tensor order
    budgets = torch.tensor(batch.budgets, device=device)
    run_seq = torch.zeros(n_items, nb, width, dtype=torch.long, device=device)
    run_lp = torch.zeros(n_items, nb, width, dtype=torch.float32, device=device)
    run_scores = torch.zeros(n_items, nb, dtype=torch.float32, device=device)
    run_scores[:, 1:] = _NEG
    fin_seq, fin_lp = run_seq.clone(), run_lp.clone()
    fin_scores = torch.full((n_items, nb), _NEG, dtype=torch.float32, device=device)
    fin_len = torch.zeros(n_items, nb, dtype=torch.long, device=device)
    fin_reason = torch.zeros(n_items, nb, dtype=torch.long, device=device)
    is_fin = torch.zeros(n_items, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(n_items, 1, dtype=torch.bool, device=device)
    results: dict[int, tuple] = {}
    decode_s = [0.0] * n_items
    cur, tick = 0, time.perf_counter()
    while True:
        stepping, n_active = list(items), len(items)
        logp = torch.log_softmax(logits.float(), dim=-1)
        scores = process(logp, config, history, tuple(batch.backend.eos_token_ids))
        acc = (scores.view(n_active, nb, vocab) + run_scores[:, :, None]).view(n_active, nb * vocab)
        topk_lp, topk_idx = torch.topk(acc, k)
        src, token = topk_idx // vocab, topk_idx % vocab
        cand_seq = _gather(run_seq, src)
        cand_seq[:, :, cur] = token
        cand_lp = _gather(run_lp, src)
        cand_lp[:, :, cur] = logp.view(n_active, nb * vocab).gather(1, topk_idx)

        hits_eos = torch.isin(token, eos)
        hits_stop = _stop_hits(batch, items, cand_seq, cur + 1)
        hits = hits_eos | hits_stop | (cur + 1 >= budgets[:, None])
        reason = torch.where(hits_eos, 1, torch.where(hits_stop, 2, 0))

        # Next running beams: the best candidates that did not just finish.
        running = topk_lp + hits.to(torch.float32) * _NEG
        keep_beams = torch.topk(running, k=nb)[1]
        run_seq, run_lp = _gather(cand_seq, keep_beams), _gather(cand_lp, keep_beams)
        run_scores, run_src = _gather(running, keep_beams), _gather(src, keep_beams)

        # Finished hypotheses: only the top nb candidates may finish, scored with the length penalty.
        just = hits & top_beam_mask[None, :]
        final = topk_lp / ((cur + 1) ** lp)
        final += (is_fin.all(dim=-1, keepdim=True) & (es is True)).to(torch.float32) * _NEG
        final += (~improvable).to(torch.float32) * _NEG
        final += (~just) * _NEG
        best = torch.topk(torch.cat((fin_scores, final), dim=1), k=nb)[1]
        fin_scores = _gather(torch.cat((fin_scores, final), dim=1), best)
        fin_seq = _gather(torch.cat((fin_seq, cand_seq), dim=1), best)
        fin_lp = _gather(torch.cat((fin_lp, cand_lp), dim=1), best)
        fin_len = _gather(torch.cat((fin_len, torch.full_like(reason, cur + 1)), dim=1), best)
        fin_reason = _gather(torch.cat((fin_reason, reason), dim=1), best)
        is_fin = _gather(torch.cat((is_fin, just), dim=1), best)
        cur += 1

        # transformers' early-stopping heuristic: can the best running beam still beat the worst finished one?
        if es == "never" and lp > 0.0:
            best_length = _per_item([b ** lp for b in budgets.tolist()], device)
        else:
            best_length = cur ** lp
        best_possible = run_scores[:, :1] / best_length
        worst_finished = torch.where(is_fin, torch.min(fin_scores, dim=1, keepdim=True)[0], _NEG)
        improvable = improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        done = ~improvable[:, 0] | (is_fin.all(dim=-1) & (es is True)) | (cur >= budgets)

        for a in done.nonzero()[:, 0].tolist():
            results[items[a]] = (fin_seq[a], fin_lp[a], fin_len[a], fin_reason[a])
        keep = (~done).nonzero()[:, 0]
        if len(keep):
            rows = (keep[:, None] * nb + run_src[keep]).flatten()
            cache = batch.backend.reorder_cache(cache, rows)
            history = history.select(rows)
            items = [items[a] for a in keep.tolist()]
            run_seq, run_lp, run_scores = run_seq[keep], run_lp[keep], run_scores[keep]
            fin_seq, fin_lp, fin_scores = fin_seq[keep], fin_lp[keep], fin_scores[keep]
            fin_len, fin_reason, is_fin = fin_len[keep], fin_reason[keep], is_fin[keep]
            improvable, budgets = improvable[keep], budgets[keep]
            next_tokens = run_seq[:, :, cur - 1].flatten()
            history.append(next_tokens)
            positions = torch.tensor([len(batch.prompts[r]) + cur - 1 for r in items for _ in range(nb)],
                                     device=device)
            logits = _step(batch, cache, next_tokens, positions)
            _sync(device)
        tick = _share_time(decode_s, stepping, tick)
        if not len(keep):
            break

    responses = []
    for r in range(n_items):
        seq, lps, lengths, reasons = results[r]
        hypotheses = [
            _response(batch, seq[j, :lengths[j]].tolist(), lps[j, :lengths[j]].tolist(),
                      _REASONS[int(reasons[j])], r)
            for j in range(config.num_return_sequences)
        ]
        hypotheses[0].timing = Timing(
            prefill_s=prefill_s / n_items,
            decode_s=decode_s[r],
            prompt_tokens=len(batch.prompts[r]),
            generated_tokens=int(lengths[:config.num_return_sequences].sum()),
        )
        hypotheses[0].alternatives = hypotheses[1:]
        responses.append(hypotheses[0])
    return responses


def _stop_hits(batch: _Batch, items: list[int], cand_seq: torch.Tensor, length: int) -> torch.Tensor:
    """[items, candidates] bool: which candidate sequences now contain one of their request's stop strings."""
    hits = torch.zeros(cand_seq.shape[:2], dtype=torch.bool)
    if any(batch.stops[r] for r in items):
        rows = cand_seq[:, :, :length].tolist()
        for a, r in enumerate(items):
            if batch.stops[r]:
                for c, tokens in enumerate(rows[a]):
                    hits[a, c] = batch.text(tokens, batch.stops[r])[1]
    return hits.to(cand_seq.device)

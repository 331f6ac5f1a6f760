"""Logits processors: one small pure function per rule, over batched ``[rows, vocab]`` scores.

Each function returns new scores and leaves its input alone. The formulas are
the references' (transformers' ``logits_process.py`` for everything but the
OpenAI-style penalties, which follow vLLM), so a strategy means the same thing
here as there. ``process`` applies them in transformers' order: penalties, then
temperature, then the filters top-k, top-p, min-p and typical.

The history a penalty needs is kept as dense per-row state rather than as
token lists: ``seen`` (a bool mask of every token in the prompt and output,
for the repetition penalty) and ``counts`` (how often each token was
generated, for the frequency and presence penalties). Both are updated in
place by the search loop and reordered with the beams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evalkit.decoding.config import DecodingConfig

FILTERED = -float("inf")


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty over every token seen (prompt and output): score / r if score > 0 else score * r."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def frequency_presence_penalty(
    scores: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI/vLLM: score -= frequency * count + presence * (count > 0), over generated tokens only."""
    return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


def no_repeat_ngram(scores: torch.Tensor, tokens: list[list[int]], n: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in the row's tokens (prompt included)."""
    out = scores.clone()
    for row, seq in enumerate(tokens):
        if len(seq) + 1 < n:
            continue
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix}
        if banned:
            out[row, list(banned)] = FILTERED
    return out


def suppress_eos(scores: torch.Tensor, rows: torch.Tensor, eos_token_ids: tuple[int, ...]) -> torch.Tensor:
    """min_new_tokens: rows still under their minimum cannot end (EOS scores become -inf)."""
    if not eos_token_ids or not bool(rows.any()):
        return scores
    out = scores.clone()
    eos = torch.tensor(eos_token_ids, device=scores.device)
    out[rows.nonzero().unsqueeze(1), eos.unsqueeze(0)] = FILTERED
    return out


def temperature(scores: torch.Tensor, t: float) -> torch.Tensor:
    return scores / t


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest scores (ties with the k-th are kept, as in transformers)."""
    k = min(k, scores.size(-1))
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, FILTERED)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose mass reaches p, always at least one."""
    sorted_scores, sorted_idx = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_idx, remove), FILTERED)


def min_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the most likely token's (the top one always)."""
    probs = torch.softmax(scores, dim=-1)
    remove = probs < p * probs.max(dim=-1, keepdim=True)[0]
    sorted_idx = torch.argsort(scores, descending=True, dim=-1)
    sorted_remove = torch.gather(remove, -1, sorted_idx)
    sorted_remove[..., :1] = False
    return scores.masked_fill(sorted_remove.scatter(1, sorted_idx, sorted_remove), FILTERED)


def typical(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to ``mass``."""
    logp = torch.log_softmax(scores, dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
    shifted = torch.abs(-logp - entropy)
    sorted_shifted, sorted_idx = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, sorted_idx).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=sorted_shifted.shape[-1] - 1)
    sorted_remove = sorted_shifted > sorted_shifted.gather(1, last.view(-1, 1))
    sorted_remove[..., :1] = False
    return scores.masked_fill(sorted_remove.scatter(1, sorted_idx, sorted_remove), FILTERED)


@dataclass
class History:
    """What the penalties need to know about each row; rows follow the cache's rows (and the beams)."""

    seen: torch.Tensor  # [rows, vocab] bool: every token of prompt and output
    counts: torch.Tensor  # [rows, vocab] float: generated-token counts
    tokens: list[list[int]]  # prompt + output token ids (no padding), for no_repeat_ngram
    generated: torch.Tensor  # [rows] int64: tokens generated so far

    @classmethod
    def empty(cls, rows: int, vocab_size: int, device: torch.device) -> History:
        return cls(
            torch.zeros(rows, vocab_size, dtype=torch.bool, device=device),
            torch.zeros(rows, vocab_size, dtype=torch.float32, device=device),
            [[] for _ in range(rows)],
            torch.zeros(rows, dtype=torch.long, device=device),
        )

    @classmethod
    def start(cls, prompts: list[list[int]], vocab_size: int, device: torch.device) -> History:
        """One row per prompt."""
        history = cls.empty(len(prompts), vocab_size, device)
        history.reset(list(range(len(prompts))), prompts)
        return history

    def reset(self, rows: list[int], prompts: list[list[int]]) -> None:
        """Rows ``rows`` start over from ``prompts`` (a new request took them)."""
        index = torch.tensor(rows, device=self.seen.device)
        self.seen[index] = False
        self.counts[index] = 0
        self.generated[index] = 0
        for row, ids in zip(rows, prompts):
            self.seen[row, ids] = True
            self.tokens[row] = list(ids)

    def append(self, next_tokens: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Each row gains its token of ``next_tokens`` ``[rows]``; with ``where``, only the rows marked True."""
        rows = torch.arange(len(next_tokens), device=next_tokens.device)
        if where is not None:
            rows, next_tokens = rows[where], next_tokens[where]
        self.append_rows(rows, next_tokens)

    def append_rows(self, rows: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Row ``rows[i]`` gains the token ``next_tokens[i]``; the other rows stay as they are."""
        self.seen[rows, next_tokens] = True
        self.counts[rows, next_tokens] += 1
        self.generated[rows] += 1
        for row, token in zip(rows.tolist(), next_tokens.tolist()):
            self.tokens[row].append(token)

    def select(self, index: torch.Tensor) -> History:
        """Keep, reorder or repeat rows, like ``Backend.reorder_cache``."""
        idx = index.tolist()
        return History(self.seen[index], self.counts[index], [list(self.tokens[i]) for i in idx],
                       self.generated[index])


def needs_history(config: DecodingConfig) -> bool:
    """Whether any processor of ``config`` looks at the tokens before the current step."""
    return bool(
        (config.repetition_penalty is not None and config.repetition_penalty != 1.0)
        or config.frequency_penalty or config.presence_penalty or config.no_repeat_ngram_size
        or (config.min_new_tokens > 0 and not config.ignore_eos)
    )


def process(
    scores: torch.Tensor, config: DecodingConfig, history: History | None, eos_token_ids: tuple[int, ...]
) -> torch.Tensor:
    """Apply the config's processors in transformers' order; ``scores`` are float32 ``[rows, vocab]``.

    ``history`` may be None when no processor needs it (:func:`needs_history`).
    """
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, history.seen, config.repetition_penalty)
    if config.frequency_penalty or config.presence_penalty:
        scores = frequency_presence_penalty(
            scores, history.counts, config.frequency_penalty or 0.0, config.presence_penalty or 0.0
        )
    if config.no_repeat_ngram_size:
        scores = no_repeat_ngram(scores, history.tokens, config.no_repeat_ngram_size)
    if config.min_new_tokens > 0 and not config.ignore_eos:
        scores = suppress_eos(scores, history.generated < config.min_new_tokens, eos_token_ids)
    if config.do_sample:
        if config.temperature != 1.0:
            scores = temperature(scores, config.temperature)
        if config.top_k is not None:
            scores = top_k(scores, config.top_k)
        if config.top_p is not None and config.top_p < 1.0:
            scores = top_p(scores, config.top_p)
        if config.min_p is not None:
            scores = min_p(scores, config.min_p)
        if config.typical_p is not None and config.typical_p < 1.0:
            scores = typical(scores, config.typical_p)
    return scores

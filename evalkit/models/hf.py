"""The transformers adapter: causal and seq2seq LMs behind ``LanguageModel`` and ``Backend``.

Scoring follows lm-evaluation-harness 0.4.13's ``HFLM`` token for token (the
context/continuation split, the prefix token of empty contexts, left
truncation, rolling windows), so a score here is a score there. Where it
differs, it differs in cost only: the base model runs to hidden states and the
output embedding is applied to the continuation rows alone, so a batch never
materialises ``[batch x positions x vocab]`` logits.

Generation is evalkit's one scheduler (:mod:`evalkit.decoding.scheduler`)
driving the model through the ``Backend`` methods. The transformers KV cache
keeps one column per step shared by every row, so rows of different lengths
are right-aligned and left-padded, with the position ids ``generate`` would
give them: greedy and beam outputs can be token-identical to ``model.generate``.
A finished row's slot takes the next prompt by splicing that prompt's freshly
computed cache into the row (continuous batching); columns no row uses any
more are trimmed, so the cache is as wide as its longest live row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evalkit.errors import EvalkitError
from evalkit.models.eos import eos_token_ids
from evalkit.models.logprobs import document_groups, target_logprobs
from evalkit.models.padding import left_pad
from evalkit.models.placement import check_device, load_dtype
from evalkit.models.request_plan import (
    TokenPair,
    check_stride,
    encode_pair,
    prefix_token_id,
    rolling_windows,
    tok_encode,
    truncate_pair,
)
from evalkit.requests import Generate, Loglikelihood, Response, RollingLoglikelihood, Timing

# lm-evaluation-harness's fallbacks when neither config nor tokenizer states a context length.
_DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1000000000000000019884624838656

OnDone = Callable[[dict[int, Response]], None]  # requests just finished: index in the call -> final response


def resolve_max_length(config: Any, tokenizer: Any) -> int:
    """The context length, derived as lm-evaluation-harness 0.4.13's ``HFLM.max_length`` derives it.

    The (text) config's ``n_positions``, ``max_position_embeddings`` or
    ``n_ctx``, else the tokenizer's ``model_max_length`` unless it is the
    "unset" sentinel, else 2048.
    """
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if model_max_length is not None and model_max_length != _TOKENIZER_INFINITY:
        return int(model_max_length)
    return _DEFAULT_MAX_LENGTH


@dataclass
class HFCache:
    """A causal model's decoding state: the transformers KV cache and the 2-D attention mask so far.

    Column ``c`` of every layer's keys and values is the ``c``-th step of
    every row; ``mask[row, c]`` says whether the row holds a real token there
    (0: left padding, an idle row, a rejected draft).
    """

    kv: Any  # transformers DynamicCache of DynamicLayers: keys/values [rows, heads, columns, head_dim]
    mask: torch.Tensor  # [rows, columns], 1 = real token, 0 = padding

    def layers(self) -> list[Any]:
        return [layer for layer in self.kv.layers if layer.is_initialized]

    def keep_columns(self, start: int, stop: int) -> None:
        """Keep columns ``start:stop`` only: those outside hold no real token of any row."""
        for layer in self.layers():
            layer.keys, layer.values = layer.keys[:, :, start:stop], layer.values[:, :, start:stop]
        self.mask = self.mask[:, start:stop]

    def trim(self) -> None:
        """Drop the leading and trailing columns that are padding in every row."""
        used = self.mask.any(dim=0).nonzero()
        if len(used) == 0:
            self.keep_columns(0, 0)
        elif int(used[0]) > 0 or int(used[-1]) + 1 < self.mask.shape[1]:
            self.keep_columns(int(used[0]), int(used[-1]) + 1)

    def splice(self, rows: torch.Tensor, part: HFCache) -> None:
        """Rows ``rows`` take the contents of ``part`` (a cache of ``len(rows)`` rows), right-aligned."""
        width, new = self.mask.shape[1], part.mask.shape[1]
        if not self.layers():  # nothing cached yet: the first prompts set the layout
            self.kv = type(part.kv)(ddp_cache_data=[
                (_zeros_rows(layer.keys, len(self.mask), rows), _zeros_rows(layer.values, len(self.mask), rows))
                for layer in part.layers()
            ])
            self.mask = _zeros_rows(part.mask, len(self.mask), rows)
            return
        if new > width:  # widen on the left with padding columns
            for layer in self.layers():
                layer.keys = _pad_left(layer.keys, new - width, dim=2)
                layer.values = _pad_left(layer.values, new - width, dim=2)
            self.mask = _pad_left(self.mask, new - width, dim=1)
            width = new
        for layer, fresh in zip(self.layers(), part.layers()):
            layer.keys[rows] = 0
            layer.values[rows] = 0
            layer.keys[rows, :, width - new :] = fresh.keys
            layer.values[rows, :, width - new :] = fresh.values
        self.mask[rows] = 0
        self.mask[rows, width - new :] = part.mask
        self.trim()


def _zeros_rows(t: torch.Tensor, n_rows: int, rows: torch.Tensor) -> torch.Tensor:
    """A tensor of ``n_rows`` rows, zero except ``rows``, which hold ``t``'s rows."""
    out = t.new_zeros((n_rows, *t.shape[1:]))
    out[rows] = t
    return out


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class Seq2SeqCache:
    """An encoder-decoder's decoding state: encoder outputs and mask, decoder KV cache and mask."""

    kv: Any  # transformers EncoderDecoderCache
    mask: torch.Tensor  # decoder tokens seen
    encoder_hidden: torch.Tensor | None = None
    encoder_mask: torch.Tensor | None = None


class HFModel:
    """A transformers causal LM as an evalkit ``LanguageModel`` and ``Backend``.

    Built around an already-loaded model, which it uses in place (a training
    loop's live module: never copied, moved or cast; switched to eval mode only
    while evalkit runs and restored afterwards). Use :func:`load_hf` to load one
    from a hub id, a folder or a GGUF file.

    ``stride`` turns rolling loglikelihood into strided sliding windows: after
    the first window, each window scores ``stride`` new tokens conditioned on
    the ``max_length - stride`` before them. ``None`` gives lm-evaluation-harness's
    disjoint windows (each token scored once, with context restarting per window).
    """

    is_encoder_decoder = False
    static_rows = False  # the row count may change: finished rows are dropped
    ragged_rows = True  # rows may hold different lengths: prefill while others decode, speculative drafts

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise EvalkitError(f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM")
        if batch_size < 1:
            raise EvalkitError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        self.batch_size = batch_size
        self.max_length = max_length or resolve_max_length(model.config, tokenizer)
        check_stride(stride, self.max_length)
        self.stride = stride
        self.device = next(model.parameters()).device
        self.vocab_size = head.weight.shape[0]
        self.eos_token_ids = eos_token_ids(getattr(model, "generation_config", None), model.config, tokenizer)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.draft: Any = None  # a draft model's Backend for speculative decoding (see evalkit.models.draft)
        # lm-eval's prefix token: conditions empty contexts and the first rolling window.
        self.prefix_token_id = prefix_token_id(tokenizer)

    # ------------------------------------------------------------------ tokenization

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """``HFLM.tok_encode`` (see :func:`evalkit.models.request_plan.tok_encode`)."""
        return tok_encode(self.tokenizer, text, add_special_tokens)

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        """Context and continuation ids as lm-evaluation-harness 0.4.13 splits them
        (see :func:`evalkit.models.request_plan.encode_pair`)."""
        return encode_pair(self.tokenizer, context, continuation, self.max_length, encoder_decoder=self.is_encoder_decoder)

    # ------------------------------------------------------------------ LanguageModel

    # ``on_done({index: response})``, where a method takes it, is called with the requests that just finished
    # (a batch, a group of documents) as soon as their responses are final: the runner reports and caches by it.

    def loglikelihood(self, requests: Sequence[Loglikelihood], on_done: OnDone | None = None) -> list[Response]:
        return self.score_tokens([self.encode_pair(r.context, r.continuation) for r in requests], on_done)

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood], on_done: OnDone | None = None) -> list[Response]:
        """lm-evaluation-harness's rolling protocol: prefix token, ``max_length`` windows, disjoint by default.

        With ``on_done``, documents are scored in groups of at least
        ``batch_size`` windows (:func:`document_groups`), so they finish one
        group at a time instead of all at the end.
        """
        windows: list[TokenPair] = []
        owners: list[int] = []
        counts = [0] * len(requests)
        for i, request in enumerate(requests):
            for window in rolling_windows(self.encode(request.text), self.prefix_token_id, self.max_length, self.stride):
                windows.append(window)
                owners.append(i)
                counts[i] += 1
        responses = [Response(logprob=0.0, is_greedy=True) for _ in requests]
        groups = document_groups(counts, self.batch_size) if on_done is not None else [range(len(requests))]
        first = 0
        for group in groups:  # a document's windows are contiguous, and so are a group's
            last = first + sum(counts[i] for i in group)
            for owner, scored in zip(owners[first:last], self.score_tokens(windows[first:last])):
                merged = responses[owner]
                merged.logprob += scored.logprob
                merged.is_greedy = merged.is_greedy and scored.is_greedy
                merged.token_ids += scored.token_ids
                merged.token_logprobs += scored.token_logprobs
                merged.timing.prefill_s += scored.timing.prefill_s
                merged.timing.prompt_tokens += scored.timing.prompt_tokens
            first = last
            if on_done is not None:
                on_done({i: responses[i] for i in group})
        return responses

    def generate(self, requests: Sequence[Generate], decoding: Any, on_done: OnDone | None = None) -> list[Response]:
        """Run evalkit's generation scheduler on this model (see :mod:`evalkit.decoding.scheduler`).

        The scheduler refuses, before any compute, a prompt whose tokens plus
        its new-token budget exceed ``max_length``.
        """
        from evalkit.decoding import generate as run_decoding

        with self.inference():
            return run_decoding(
                backend=self, tokenizer=self.tokenizer, requests=requests, config=decoding, batch_size=self.batch_size,
                on_done=on_done, draft=self.draft,
            )

    # ------------------------------------------------------------------ scoring

    def score_tokens(self, pairs: Sequence[TokenPair], on_done: OnDone | None = None) -> list[Response]:
        """Log-probabilities of each pair's continuation given its context, batched, in the input order.

        Pairs are sorted longest first (as lm-eval does: the first batch is the
        largest, so memory trouble shows at once, and similar lengths share a batch).
        ``on_done({index: response})`` is called with each batch's pairs as it finishes.
        """
        wholes = [ctx + cont for ctx, cont in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-len(wholes[i]), wholes[i]))
        responses: list[Response | None] = [None] * len(pairs)
        with self.inference():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                t0 = time.perf_counter()
                token_logprobs, greedy, prompt_lens = self.batch_logprobs([pairs[i] for i in chunk])
                elapsed = time.perf_counter() - t0
                total = sum(prompt_lens)
                offset = 0
                for i, prompt_len in zip(chunk, prompt_lens):
                    cont = pairs[i][1]
                    lps = token_logprobs[offset : offset + len(cont)]
                    responses[i] = Response(
                        token_ids=list(cont),
                        token_logprobs=lps.tolist(),
                        logprob=float(lps.sum()),
                        is_greedy=bool(greedy[offset : offset + len(cont)].all()),
                        timing=Timing(prefill_s=elapsed * prompt_len / total, prompt_tokens=prompt_len),
                    )
                    offset += len(cont)
                if on_done is not None:
                    on_done({i: responses[i] for i in chunk})
        return responses  # type: ignore[return-value]

    def batch_logprobs(self, pairs: Sequence[TokenPair]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One forward pass over right-padded windows.

        Returns the continuation tokens' log-probabilities and whether each was
        the argmax, concatenated over the batch, plus each row's input length.
        As in lm-eval, a row's input is the last ``max_length + 1`` tokens of
        context + continuation minus the final one (:func:`truncate_pair`).
        """
        inputs = [(ctx + cont)[:-1] for ctx, cont in (truncate_pair(*pair, self.max_length) for pair in pairs)]
        ids = torch.zeros(len(inputs), max(map(len, inputs)), dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        hidden = self.model.base_model(input_ids=ids.to(self.device), use_cache=False).last_hidden_state
        rows = torch.cat([torch.full((len(c),), r) for r, (_, c) in enumerate(pairs)])
        cols = torch.cat([torch.arange(len(x) - len(c), len(x)) for x, (_, c) in zip(inputs, pairs)])
        targets = torch.tensor([t for _, c in pairs for t in c], device=self.device)
        selected = hidden[rows.to(self.device), cols.to(self.device)]  # [continuation tokens, hidden]
        token_logprobs, greedy = target_logprobs(self.project, selected, targets)
        return token_logprobs, greedy, [len(x) for x in inputs]

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states to logits: the output embedding, plus Gemma-2-style final soft-capping when configured."""
        logits = self.model.get_output_embeddings()(hidden)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    @contextmanager
    def inference(self) -> Iterator[None]:
        """No autograd, eval mode (no dropout) for the duration; the caller's training mode comes back after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ Backend

    def new_cache(self, rows: int, max_len: int) -> HFCache:
        from transformers import DynamicCache

        # Plain DynamicLayers (no config): every layer keeps every column, which splicing and truncation need.
        return HFCache(kv=DynamicCache(), mask=self._empty_mask(rows))

    def prefill(self, cache: HFCache, rows: torch.Tensor, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """The prompts run as their own left-padded batch, and their cache is spliced into ``rows``."""
        ids, positions = left_pad(prompts, self.device)
        part = self.new_cache(len(prompts), ids.shape[1])
        logits = self.forward(ids, positions, part, last_only=True)[:, -1]
        cache.splice(rows.to(self.device), part)
        return logits

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: HFCache, *, last_only: bool = False
    ) -> torch.Tensor:
        """Append ``token_ids`` to the cache and return float32 logits ``[rows, steps or 1, vocab]``.

        Padding slots (position -1) enter the attention mask as 0 and get the
        position id 1, exactly as ``generate`` prepares left-padded inputs
        (``attention_mask.cumsum(-1) - 1``, padding filled with 1).
        """
        real = positions >= 0
        cache.mask = torch.cat([cache.mask, real.long()], dim=1)
        with self.inference():
            hidden = self.model.base_model(
                input_ids=token_ids.clamp(min=0),
                attention_mask=cache.mask,
                position_ids=positions.masked_fill(~real, 1),
                past_key_values=cache.kv,
                use_cache=True,
            ).last_hidden_state
            if last_only:
                hidden = hidden[:, -1:]
            return self.project(hidden).float()

    def reorder_cache(self, cache: HFCache, index: torch.Tensor) -> HFCache:
        index = index.to(self.device)
        for layer in cache.layers():
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        cache.mask = cache.mask[index]
        cache.trim()
        return cache

    def truncate(self, cache: HFCache, lengths: torch.Tensor) -> None:
        """A row keeps its first ``lengths[row]`` real tokens; the columns after them become padding."""
        cache.mask = cache.mask * (cache.mask.cumsum(dim=1) <= lengths.to(cache.mask.device)[:, None])
        cache.trim()

    def _empty_mask(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 0, dtype=torch.long, device=self.device)


class HFSeq2SeqModel(HFModel):
    """A transformers encoder-decoder (T5, Marian, BART) as ``LanguageModel`` and ``Backend``.

    ``prefill`` runs the encoder on the prompts and feeds the decoder start
    token; ``forward`` then runs decoder steps against the cached encoder
    outputs. Loglikelihood follows lm-eval: the context goes to the encoder, the
    continuation is the decoder's target. Every decoder position is a target,
    so the full decoder logits are exactly the rows needed.
    """

    is_encoder_decoder = True
    ragged_rows = False  # decoder positions follow the cache's columns: every row starts together

    def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihood]) -> list[Response]:
        raise EvalkitError(
            f"{self.name} is an encoder-decoder model; perplexity (rolling loglikelihood) needs a causal LM"
        )

    def batch_logprobs(self, pairs: Sequence[TokenPair]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        contexts = [truncate_pair(ctx, cont, self.max_length, encoder_decoder=True)[0] for ctx, cont in pairs]
        input_ids, attention_mask = self._right_pad(contexts)
        labels, _ = self._right_pad([cont for _, cont in pairs], fill=-100)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        rows = torch.cat([torch.full((len(c),), r) for r, (_, c) in enumerate(pairs)]).to(self.device)
        cols = torch.cat([torch.arange(len(c)) for _, c in pairs]).to(self.device)
        targets = torch.tensor([t for _, c in pairs for t in c], device=self.device)
        token_logprobs, greedy = target_logprobs(lambda rows_: rows_, logits[rows, cols], targets)
        return token_logprobs, greedy, [len(c) for c in contexts]

    def new_cache(self, batch: int, max_len: int) -> Seq2SeqCache:
        from transformers import DynamicCache, EncoderDecoderCache

        config = self.model.config
        kv = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        return Seq2SeqCache(kv=kv, mask=self._empty_mask(batch))

    def prefill(self, cache: Seq2SeqCache, rows: torch.Tensor, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Encode the prompts and take the decoder's first step; float32 logits ``[rows, vocab]``.

        The encoder gets the prompts right-padded, as their own tokenizers pad.
        Decoder positions follow the cache's columns here, so rows cannot start
        at different times (``ragged_rows`` is False): ``rows`` is every row of
        a fresh cache, and the scheduler admits the next prompts as a new wave.
        """
        if len(rows) != len(cache.mask) or cache.encoder_hidden is not None:
            raise EvalkitError("an encoder-decoder cache is prefilled once, for all its rows; start a new cache")
        input_ids, attention_mask = self._right_pad([list(p) for p in prompts])
        with self.inference():
            encoder = self.model.get_encoder()
            cache.encoder_hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cache.encoder_mask = attention_mask
        start = torch.full((len(prompts), 1), self._decoder_start_token_id(), dtype=torch.long, device=self.device)
        return self.forward(start, torch.zeros_like(start), cache, last_only=True)[:, -1]

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, cache: Seq2SeqCache, *, last_only: bool = False
    ) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        if cache.encoder_hidden is None:
            raise EvalkitError("seq2seq decoding must call prefill(cache, prompt_ids) before forward")
        cache.mask = torch.cat([cache.mask, (positions >= 0).long()], dim=1)
        with self.inference():
            logits = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=cache.encoder_hidden),
                attention_mask=cache.encoder_mask,
                decoder_input_ids=token_ids,
                # generate passes no decoder mask; only rows padded by the loop need one
                decoder_attention_mask=None if bool(cache.mask.all()) else cache.mask,
                past_key_values=cache.kv,
                use_cache=True,
            ).logits
        return (logits[:, -1:] if last_only else logits).float()

    def reorder_cache(self, cache: Seq2SeqCache, index: torch.Tensor) -> Seq2SeqCache:
        index = index.to(self.device)
        cache.kv.reorder_cache(index)
        cache.mask = cache.mask.index_select(0, index)
        if cache.encoder_hidden is not None:
            cache.encoder_hidden = cache.encoder_hidden.index_select(0, index)
            cache.encoder_mask = cache.encoder_mask.index_select(0, index)
        return cache

    def truncate(self, cache: Seq2SeqCache, lengths: torch.Tensor) -> None:
        raise EvalkitError(f"{self.name} is an encoder-decoder model; speculative decoding needs a causal LM")

    def _decoder_start_token_id(self) -> int:
        start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            start = self.model.config.decoder_start_token_id
        if start is None:
            raise EvalkitError(f"{self.name} config names no decoder_start_token_id; set it in the model's config")
        return int(start)

    def _right_pad(self, rows: Sequence[Sequence[int]], fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their mask (T5's relative positions need real tokens to start at 0)."""
        pad = fill if fill is not None else (self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, tokens in enumerate(rows):
            ids[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[r, : len(tokens)] = 1
        return ids.to(self.device), mask.to(self.device)


def load_hf(
    path: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    stride: int | None = None,
    gguf_file: str | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
) -> HFModel:
    """Load a causal or seq2seq transformers model from a hub id, a folder, a .safetensors file or a GGUF file.

    A GGUF file (``path`` ending in .gguf, or a folder plus ``gguf_file``) is
    converted once into a cached transformers folder (see
    :mod:`evalkit.models.gguf_cache`) and loaded from there.
    """
    import transformers

    from evalkit.models.gguf_cache import convert_gguf

    check_device(device)
    source = Path(path).expanduser()
    if gguf_file is not None:
        source = source / gguf_file
    if source.suffix == ".gguf":
        source = convert_gguf(source)
    elif source.suffix == ".safetensors":
        source = source.parent
    location = str(source) if source.exists() else path
    try:
        config = transformers.AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(
            location, dtype=load_dtype(dtype, device, accelerated="auto"), trust_remote_code=trust_remote_code
        ).to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvalkitError(
            f"cannot load model {path!r} ({first_line}); pass a hub id, a model folder, or a .gguf file"
        ) from err
    model.eval()
    cls = HFSeq2SeqModel if config.is_encoder_decoder else HFModel
    return cls(model, tokenizer, name=name or path, batch_size=batch_size, max_length=max_length, stride=stride)

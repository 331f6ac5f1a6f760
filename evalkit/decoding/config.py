"""DecodingConfig: one strategy of the grid, as a frozen, hashable record.

The record is validated when it is built, so a bad grid fails with one line
before any model is loaded. Its ``label`` names the strategy in tables and
file names; ``describe()`` spells out every non-default setting so a result is
never separated from the exact algorithm that produced it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from evalkit.errors import EvalkitError

EarlyStopping = bool | str

#: Parameters that only mean something when tokens are sampled.
SAMPLING_FIELDS = ("top_k", "top_p", "min_p", "typical_p")

#: How speculative decoding proposes tokens: from an n-gram of the prompt and output, or from a draft model.
SPECULATIVE_METHODS = ("lookup", "draft")

#: Settings added after response caches existed: left out of ``key()`` at their defaults, so old entries stay valid.
_LATER_FIELDS = ("speculative", "num_speculative_tokens", "lookup_max_ngram", "lookup_min_ngram", "draft_model")


@dataclass(frozen=True)
class DecodingConfig:
    """How to pick tokens. The defaults are greedy decoding (temperature 0).

    * ``temperature`` 0 is greedy (argmax); > 0 samples from the processed softmax.
    * ``num_beams`` > 1 is beam search as in transformers' ``generate`` (deterministic:
      beam sampling is not offered, so sampling parameters are rejected there).
    * ``early_stopping`` is True, False or "never", with transformers' meaning.
    * ``max_new_tokens`` overrides the request's budget when set.
    * ``stop`` is added to each request's own stop strings.
    * ``seed`` with the request's content fixes every sampled token (see ``sampling.py``).
    * ``speculative`` ("lookup" or "draft") proposes ``num_speculative_tokens`` tokens per step that the
      model checks in one forward pass (see ``speculative.py``): greedy stays token-identical to greedy,
      sampling keeps the model's distribution exactly. "lookup" copies the tokens that followed the latest
      earlier occurrence of the last n tokens (n = ``lookup_max_ngram`` down to ``lookup_min_ngram``); "draft" asks
      ``draft_model``, a smaller model with the same tokenizer.
    """

    name: str = ""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    num_return_sequences: int = 1
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int = 0
    speculative: str | None = None
    num_speculative_tokens: int = 0
    lookup_max_ngram: int = 3
    lookup_min_ngram: int = 1
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        _validate(self)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    @property
    def is_beam(self) -> bool:
        return self.num_beams > 1

    @property
    def is_speculative(self) -> bool:
        return self.speculative is not None

    @property
    def label(self) -> str:
        """A short name for tables: the given ``name``, else one built from the settings ("temp0.7+top-p0.9")."""
        return self.name or _derived_label(self)

    def describe(self) -> str:
        """The label and every setting that differs from the defaults, e.g. ``top-p0.9 (temperature=1.0, top_p=0.9)``."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name) != f.default
        ]
        return f"{self.label} ({', '.join(changed)})" if changed else f"{self.label} (greedy defaults)"

    def key(self) -> str:
        """A stable hash of the settings (not the name): equal algorithms share cache entries."""
        defaults = {f.name: f.default for f in fields(self)}
        data = {
            k: v for k, v in self.to_dict().items()
            if k not in ("name", "label") and not (k in _LATER_FIELDS and v == defaults[k])
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stop"] = list(self.stop)
        data["label"] = self.label
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DecodingConfig:
        data = {k: v for k, v in data.items() if k != "label"}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            valid = ", ".join(f.name for f in fields(cls))
            raise EvalkitError(f"unknown decoding setting(s) {', '.join(unknown)}; valid settings: {valid}")
        if "stop" in data:
            data["stop"] = tuple(data["stop"]) if not isinstance(data["stop"], str) else (data["stop"],)
        return cls(**data)


def _fail(config: DecodingConfig, message: str) -> None:
    where = f" {config.name!r}" if config.name else ""
    raise EvalkitError(f"invalid decoding config{where}: {message}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(c: DecodingConfig) -> None:
    """One rule per line; the first broken rule is reported with its fix."""
    for name in ("temperature", "length_penalty"):
        if not _is_number(getattr(c, name)):
            _fail(c, f"{name} must be a number, got {getattr(c, name)!r}")
    for name in ("top_p", "min_p", "typical_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
        value = getattr(c, name)
        if value is not None and not _is_number(value):
            _fail(c, f"{name} must be a number, got {value!r}")
    for name in ("top_k", "no_repeat_ngram_size", "max_new_tokens", "num_beams", "num_return_sequences",
                 "min_new_tokens", "seed"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            _fail(c, f"{name} must be an integer, got {value!r}")
    if c.temperature < 0:
        _fail(c, f"temperature must be >= 0 (0 = greedy), got {c.temperature}")
    if c.top_k is not None and c.top_k < 1:
        _fail(c, f"top_k must be >= 1, got {c.top_k}; leave it unset to keep every token")
    if c.top_p is not None and not 0 < c.top_p <= 1:
        _fail(c, f"top_p must be in (0, 1], got {c.top_p}")
    if c.min_p is not None and not 0 <= c.min_p <= 1:
        _fail(c, f"min_p must be in [0, 1], got {c.min_p}")
    if c.typical_p is not None and not 0 < c.typical_p <= 1:
        _fail(c, f"typical_p must be in (0, 1], got {c.typical_p}")
    if c.repetition_penalty is not None and c.repetition_penalty <= 0:
        _fail(c, f"repetition_penalty must be > 0 (1.0 = off), got {c.repetition_penalty}")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(c, name)
        if value is not None and not -2 <= value <= 2:
            _fail(c, f"{name} must be in [-2, 2] as in the OpenAI API, got {value}")
    if c.no_repeat_ngram_size is not None and c.no_repeat_ngram_size < 1:
        _fail(c, f"no_repeat_ngram_size must be >= 1, got {c.no_repeat_ngram_size}")
    if c.num_beams < 1:
        _fail(c, f"num_beams must be >= 1, got {c.num_beams}")
    if c.num_return_sequences < 1:
        _fail(c, f"num_return_sequences must be >= 1, got {c.num_return_sequences}")
    if c.max_new_tokens is not None and c.max_new_tokens < 1:
        _fail(c, f"max_new_tokens must be >= 1, got {c.max_new_tokens}")
    if c.min_new_tokens < 0:
        _fail(c, f"min_new_tokens must be >= 0, got {c.min_new_tokens}")
    if c.max_new_tokens is not None and c.min_new_tokens > c.max_new_tokens:
        _fail(c, f"min_new_tokens ({c.min_new_tokens}) exceeds max_new_tokens ({c.max_new_tokens})")
    if c.early_stopping not in (True, False, "never") or (
        isinstance(c.early_stopping, int) and not isinstance(c.early_stopping, bool)
    ):
        _fail(c, f"early_stopping must be true, false or 'never', got {c.early_stopping!r}")
    if not all(isinstance(s, str) and s for s in c.stop):
        _fail(c, f"stop strings must be non-empty strings, got {list(c.stop)!r}")
    _validate_speculative(c)
    given_sampling = [name for name in SAMPLING_FIELDS if getattr(c, name) is not None]
    if c.is_beam:
        if c.do_sample or given_sampling:
            what = ", ".join((["temperature"] if c.do_sample else []) + given_sampling)
            _fail(c, f"{what} cannot be combined with beam search (num_beams={c.num_beams}); "
                     "beam search is deterministic: drop them or set num_beams=1")
        if c.num_return_sequences > c.num_beams:
            _fail(c, f"num_return_sequences ({c.num_return_sequences}) must be <= num_beams ({c.num_beams})")
    else:
        if given_sampling and not c.do_sample:
            _fail(c, f"{', '.join(given_sampling)} need sampling: set temperature > 0 (e.g. 1.0)")
        if c.num_return_sequences > 1 and not c.do_sample:
            _fail(c, "greedy decoding returns one sequence: set temperature > 0 or num_beams >= "
                     f"{c.num_return_sequences} for num_return_sequences={c.num_return_sequences}")
        if c.length_penalty != 1.0 or c.early_stopping is not False:
            _fail(c, "length_penalty and early_stopping only apply to beam search: set num_beams > 1")


def _validate_speculative(c: DecodingConfig) -> None:
    if not isinstance(c.num_speculative_tokens, int) or isinstance(c.num_speculative_tokens, bool):
        _fail(c, f"num_speculative_tokens must be an integer, got {c.num_speculative_tokens!r}")
    if c.speculative is None:
        if c.num_speculative_tokens or c.draft_model is not None:
            _fail(c, "num_speculative_tokens and draft_model need speculative='lookup' or 'draft'")
        return
    if c.speculative not in SPECULATIVE_METHODS:
        _fail(c, f"speculative must be one of {', '.join(SPECULATIVE_METHODS)}, got {c.speculative!r}")
    if c.num_speculative_tokens < 1:
        _fail(c, f"{c.speculative}{c.num_speculative_tokens} proposes no token: give it K >= 1 "
                 f"(e.g. {c.speculative}4)")
    for name in ("lookup_min_ngram", "lookup_max_ngram"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(c, f"{name} must be an integer >= 1, got {value!r}")
    if c.lookup_min_ngram > c.lookup_max_ngram:
        _fail(c, f"lookup_min_ngram ({c.lookup_min_ngram}) exceeds lookup_max_ngram ({c.lookup_max_ngram})")
    if c.speculative == "lookup" and c.draft_model is not None:
        _fail(c, "draft_model is for speculative='draft'; lookup drafts from the prompt and output")
    if c.is_beam:
        _fail(c, f"speculative decoding ({c.speculative}{c.num_speculative_tokens}) drafts one sequence per "
                 f"row and cannot be combined with beam search (num_beams={c.num_beams}); drop one of them")


def _fmt(value: float) -> str:
    return f"{value:g}"


def _derived_label(c: DecodingConfig) -> str:
    parts: list[str] = []
    if c.is_beam:
        parts.append(f"beam{c.num_beams}")
        if c.length_penalty != 1.0:
            parts.append(f"lp{_fmt(c.length_penalty)}")
        if c.early_stopping is not False:
            parts.append("early" if c.early_stopping is True else "early-never")
    elif c.do_sample:
        parts.append(f"temp{_fmt(c.temperature)}")
    for value, prefix in (
        (c.top_k, "top-k"), (c.top_p, "top-p"), (c.min_p, "min-p"), (c.typical_p, "typical"),
        (c.repetition_penalty, "rep"), (c.frequency_penalty, "freq"), (c.presence_penalty, "pres"),
        (c.no_repeat_ngram_size, "ngram"),
    ):
        if value is not None:
            parts.append(f"{prefix}{_fmt(value)}")
    if c.num_return_sequences > 1:
        parts.append(f"n{c.num_return_sequences}")
    if not parts:
        parts.append("greedy")
    if c.speculative is not None:
        parts.append(f"{c.speculative}{c.num_speculative_tokens}")
    return "+".join(parts)

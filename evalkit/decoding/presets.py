"""Named strategies and grids: ``--decoding greedy,beam4,temp0.7+top-p0.9`` and ``--decoding-file grid.yaml``.

A spec is a comma-separated list of strategies; a strategy is one or more
``+``-joined parts (``beam4+lp0.6+n2``). Sampling filters alone (``top-p0.9``)
sample at temperature 1.0, as the OpenAI API and vLLM do; penalties alone
(``rep1.2``) decorate greedy decoding, as transformers applies them in greedy
search too. Every strategy keeps its spec text as its label.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from evalkit.decoding.config import SAMPLING_FIELDS, DecodingConfig
from evalkit.errors import EvalkitError, not_utf8

_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_INT = r"(\d+)"

# (form shown to users, pattern, settings it gives, description)
_PARTS: list[tuple[str, str, Callable[[str], dict[str, Any]], str]] = [
    ("greedy", r"greedy", lambda _: {"temperature": 0.0}, "argmax at every step (the default)"),
    ("beamN", rf"beam{_INT}", lambda v: {"num_beams": int(v)}, "beam search with N beams, as transformers' generate"),
    ("tempT", rf"temp{_NUM}", lambda v: {"temperature": float(v)}, "sample at temperature T (temp0 = greedy)"),
    ("top-kK", rf"top-k{_INT}", lambda v: {"top_k": int(v)}, "sample from the K most likely tokens"),
    ("top-pP", rf"top-p{_NUM}", lambda v: {"top_p": float(v)}, "nucleus sampling: the smallest set with mass P"),
    ("min-pP", rf"min-p{_NUM}", lambda v: {"min_p": float(v)}, "sample tokens with p >= P * p_max"),
    ("typicalP", rf"typical{_NUM}", lambda v: {"typical_p": float(v)}, "locally typical sampling with mass P"),
    ("repR", rf"rep{_NUM}", lambda v: {"repetition_penalty": float(v)},
     "CTRL repetition penalty R over prompt and output (HF, vLLM)"),
    ("freqF", rf"freq(-?{_NUM})", lambda v: {"frequency_penalty": float(v)},
     "OpenAI frequency penalty F over generated tokens"),
    ("presP", rf"pres(-?{_NUM})", lambda v: {"presence_penalty": float(v)},
     "OpenAI presence penalty P over generated tokens"),
    ("ngramN", rf"ngram{_INT}", lambda v: {"no_repeat_ngram_size": int(v)}, "never repeat an N-gram"),
    ("lpX", rf"lp(-?{_NUM})", lambda v: {"length_penalty": float(v)}, "beam length penalty: score / length ** X"),
    ("early", r"early", lambda _: {"early_stopping": True}, "beam early_stopping=True"),
    ("early-never", r"early-never", lambda _: {"early_stopping": "never"}, "beam early_stopping='never'"),
    ("nN", rf"n{_INT}", lambda v: {"num_return_sequences": int(v)}, "return N sequences (beams or samples)"),
    ("maxN", rf"max{_INT}", lambda v: {"max_new_tokens": int(v)}, "at most N new tokens (overrides the task)"),
    ("seedS", rf"seed{_INT}", lambda v: {"seed": int(v)}, "sampling seed S"),
    ("lookupK", rf"lookup{_INT}", lambda v: {"speculative": "lookup", "num_speculative_tokens": int(v)},
     "speculative decoding: K tokens drafted by n-gram lookup in prompt + output (no second model)"),
    ("draftK", rf"draft{_INT}", lambda v: {"speculative": "draft", "num_speculative_tokens": int(v)},
     "speculative decoding: K tokens drafted by --draft-model (same tokenizer)"),
]
_COMPILED = [(form, re.compile(pattern + r"\Z"), make) for form, pattern, make, _ in _PARTS]
VALID_FORMS = ", ".join(form for form, *_ in _PARTS)


def list_presets() -> list[tuple[str, str]]:
    """(form, description) of every strategy part, for ``evalkit list decoding``; join parts with '+'."""
    return [(form, description) for form, _, _, description in _PARTS]


def _parse_part(part: str, strategy: str) -> dict[str, Any]:
    for _, pattern, make in _COMPILED:
        match = pattern.match(part)
        if match:
            return make(match.group(1) if match.groups() else "")
    raise EvalkitError(
        f"unknown decoding strategy {part!r} in {strategy!r}; valid forms (join with '+', separate "
        f"strategies with ','): {VALID_FORMS}"
    )


def parse_strategy(strategy: str, base: DecodingConfig | None = None) -> DecodingConfig:
    """One strategy, e.g. ``temp0.7+top-p0.9``; ``base`` supplies settings the spec leaves alone."""
    text = strategy.strip()
    if not text:
        raise EvalkitError(f"empty decoding strategy; valid forms: {VALID_FORMS}")
    settings: dict[str, Any] = {}
    for part in text.split("+"):
        for key, value in _parse_part(part.strip().lower(), text).items():
            if key in settings and settings[key] != value:
                raise EvalkitError(f"decoding strategy {text!r} sets {key} twice; keep one")
            settings[key] = value
    if any(key in settings for key in SAMPLING_FIELDS) and "temperature" not in settings:
        settings["temperature"] = 1.0
    merged = {**(base.to_dict() if base else {}), **settings, "name": text}
    return DecodingConfig.from_dict(merged)


def parse_decoding(spec: str) -> list[DecodingConfig]:
    """``"greedy,beam4,temp0.7+top-p0.9"`` -> one DecodingConfig per comma-separated strategy."""
    strategies = [s for s in (spec or "").split(",") if s.strip()]
    if not strategies:
        raise EvalkitError(f"decoding={spec!r} is empty; give e.g. 'greedy,beam4,top-p0.9' (forms: {VALID_FORMS})")
    configs = [parse_strategy(s) for s in strategies]
    _check_unique(configs, f"decoding={spec!r}")
    return configs


def load_decoding_file(path: str | Path) -> list[DecodingConfig]:
    """A YAML grid of strategies. Either a list, or a mapping with any of these keys::

        base: {max_new_tokens: 64}             # settings shared by every strategy
        strategies:                            # explicit strategies: a spec string or a mapping
          - beam4+lp0.6
          - {name: nucleus, temperature: 0.7, top_p: 0.9}
        grid: {temperature: [0.5, 1.0], top_p: [0.9, 0.95]}   # the cartesian product

    Keys of a mapping are DecodingConfig fields; anything else is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalkitError(f"decoding file {path} does not exist; pass the path of a YAML grid")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise EvalkitError(f"decoding file {path} is not valid YAML{line}; fix the syntax") from None
    if isinstance(data, list):
        data = {"strategies": data}
    if not isinstance(data, dict) or not data:
        raise EvalkitError(f"decoding file {path} must hold a list of strategies or a mapping with "
                           "'strategies', 'grid' and/or 'base'")
    unknown = sorted(set(data) - {"base", "strategies", "grid"})
    if unknown:
        raise EvalkitError(f"decoding file {path}: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                           "use 'base', 'strategies' and/or 'grid'")
    base_settings = data.get("base") or {}
    if not isinstance(base_settings, dict):
        raise EvalkitError(f"decoding file {path}: 'base' must be a mapping of settings")
    base = _from_mapping(base_settings, path, "base")
    configs = [_from_entry(entry, base, path) for entry in data.get("strategies") or []]
    configs += _expand_grid(data.get("grid"), base, path)
    if not configs:
        raise EvalkitError(f"decoding file {path} defines no strategy; add 'strategies' or 'grid'")
    _check_unique(configs, str(path))
    return configs


def _from_mapping(settings: dict, path: Path, where: str, base: DecodingConfig | None = None) -> DecodingConfig:
    try:
        merged = {**(base.to_dict() if base else {}), **settings}
        if base is not None and "name" not in settings:
            merged["name"] = ""
        return DecodingConfig.from_dict(merged)
    except EvalkitError as exc:
        raise EvalkitError(f"decoding file {path}, {where}: {exc}") from None
    except TypeError as exc:  # e.g. a list where a number belongs
        raise EvalkitError(f"decoding file {path}, {where}: {exc}") from None


def _from_entry(entry: Any, base: DecodingConfig, path: Path) -> DecodingConfig:
    if isinstance(entry, str):
        try:
            return parse_strategy(entry, base)
        except EvalkitError as exc:
            raise EvalkitError(f"decoding file {path}: {exc}") from None
    if isinstance(entry, dict):
        return _from_mapping(entry, path, f"strategy {entry.get('name', entry)!r}", base)
    raise EvalkitError(f"decoding file {path}: a strategy must be a spec string or a mapping, got {entry!r}")


def _expand_grid(grid: Any, base: DecodingConfig, path: Path) -> list[DecodingConfig]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise EvalkitError(f"decoding file {path}: 'grid' must map settings to lists of values")
    axes = {key: values if isinstance(values, list) else [values] for key, values in grid.items()}
    configs = []
    for combo in itertools.product(*axes.values()):
        settings = dict(zip(axes, combo))
        if any(key in settings for key in SAMPLING_FIELDS) and "temperature" not in settings \
                and base.temperature == 0:
            settings["temperature"] = 1.0
        configs.append(_from_mapping(settings, path, f"grid point {settings}", base))
    return configs


def _check_unique(configs: list[DecodingConfig], where: str) -> None:
    seen: set[str] = set()
    for config in configs:
        if config.label in seen:
            raise EvalkitError(f"{where}: strategy {config.label!r} appears twice; give each strategy a distinct name")
        seen.add(config.label)

"""Decoding strategies implemented once, over the Backend protocol: configs, presets, processors, the scheduler."""

from evalkit.decoding.compare import compare_strategies, strategy_rows
from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.presets import list_presets, load_decoding_file, parse_decoding, parse_strategy
from evalkit.decoding.scheduler import generate

__all__ = [
    "DecodingConfig",
    "compare_strategies",
    "generate",
    "list_presets",
    "load_decoding_file",
    "parse_decoding",
    "parse_strategy",
    "strategy_rows",
]

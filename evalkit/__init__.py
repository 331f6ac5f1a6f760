"""evalkit: evaluate language models on tasks x decoding strategies, with quality and cost."""

from evalkit.api import evaluate, flatten
from evalkit.decoding.config import DecodingConfig
from evalkit.errors import EvalkitError

__all__ = ["evaluate", "flatten", "DecodingConfig", "EvalkitError"]
__version__ = "0.1.0"

"""lm-eval's request plan, as evalkit copies it (:mod:`evalkit.models.request_plan`), against lm-eval itself.

No model is loaded: windows are compared on random token lists, and the
context/continuation split on a character tokenizer. The parity tests of the
adapters (tests/test_hf_adapter.py, tests/test_native_engine.py) check the
same plan through real models and real tokenizers.
"""

from __future__ import annotations

import random

import pytest
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from evalkit.errors import EvalkitError
from evalkit.models.request_plan import encode_pair, rolling_windows, tok_encode, truncate_pair

pytestmark = pytest.mark.unit


def test_rolling_windows_equal_lm_eval_disjoint_and_strided():
    rng = random.Random(0)
    for _ in range(500):
        max_length = rng.randint(1, 40)
        tokens = [rng.randint(3, 97) for _ in range(rng.randint(0, 150))]
        stride = rng.choice([None, rng.randint(1, max_length)])
        context_len = 1 if stride is None else max_length - stride + 1
        expected = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, max_length, context_len)]
        assert rolling_windows(tokens, 1, max_length, stride) == expected


def test_stride_out_of_range_is_one_line_error():
    with pytest.raises(EvalkitError, match="stride must be between 1 and max_length=8, got 9"):
        rolling_windows([5, 6, 7], 1, 8, stride=9)


def test_pair_split_truncation_and_errors(char_tokenizer):
    tok = char_tokenizer  # BOS decodes to "": every text "starts with BOS", as lm-eval's has_bos_prefix says
    assert tok_encode(tok, "ab") == [68, 69] and tok_encode(tok, "ab", add_special_tokens=True) == [1, 68, 69]
    assert encode_pair(tok, "ab  ", "c", 8) == ([68, 69], [3, 3, 70])  # trailing blanks move to the continuation
    assert encode_pair(tok, "", "c", 8) == ([1], [70])  # an empty context conditions on the prefix token
    assert truncate_pair([10, 11, 12, 13], [14, 15], 4) == ([11, 12, 13], [14, 15])  # inputs: 11 12 13 14
    assert truncate_pair([10, 11, 12, 13], [14, 15], 3, encoder_decoder=True) == ([11, 12, 13], [14, 15])
    with pytest.raises(EvalkitError, match="empty continuation"):
        encode_pair(tok, "ab", "", 8)
    with pytest.raises(EvalkitError, match="longer than the model's max_length=2"):
        encode_pair(tok, "ab", "cde", 2)

"""Stop strings end an output wherever they appear, special tokens included (a chat template's end of turn)."""

from __future__ import annotations

import pytest

from evalkit.decoding.config import DecodingConfig
from evalkit.decoding.stops import cut_at_stop, cut_text, hidden_stops
from evalkit.requests import Generate


@pytest.mark.unit
def test_cut_text_takes_the_earliest_stop():
    assert cut_text("a. b\nc", ("\n", ".")) == ("a", True)
    assert cut_text("abc", ("x",)) == ("abc", False)
    assert cut_text("abc", ()) == ("abc", False)


@pytest.mark.integration
def test_special_token_stops_are_found_and_cut(smollm2_tokenizer):
    """`<|im_start|>` is a special token: decoded without specials it is gone, yet it ends the answer there."""
    assert hidden_stops(smollm2_tokenizer, ("<|im_start|>", "\n", "Question:")) == ("<|im_start|>",)
    tokens = smollm2_tokenizer.encode("The answer is 4.<|im_start|>user\nmore", add_special_tokens=False)
    assert cut_at_stop(smollm2_tokenizer, tokens, ("<|im_start|>",)) == ("The answer is 4.", True)
    assert cut_at_stop(smollm2_tokenizer, tokens, ("answer",)) == ("The ", True)
    assert cut_at_stop(smollm2_tokenizer, tokens, ("Question:",)) == ("The answer is 4.user\nmore", False)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["hf", "native"])
def test_generation_stops_at_the_end_of_turn_when_eos_is_ignored(smollm2, backend):
    """With EOS ignored, the chat template's end-of-turn stop string alone must end the answer, on both loops."""
    from evalkit.models.native import NativeModel
    from evalkit.tasks.chat import resolve_template

    model = smollm2 if backend == "hf" else NativeModel.from_hf(smollm2.model, smollm2.tokenizer, batch_size=2)
    template = resolve_template(True, smollm2.tokenizer, "smollm2-135m")
    prompt = template.render([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    (free,) = model.generate([Generate(prompt, (), 48)], DecodingConfig(ignore_eos=True))
    (stopped,) = model.generate([Generate(prompt, (template.end_of_turn(),), 48)], DecodingConfig(ignore_eos=True))
    assert free.finish_reason == "length" and "user" in free.text  # ran past its turn into the next one
    assert stopped.finish_reason == "stop" and stopped.text and free.text.startswith(stopped.text)
    assert "user" not in stopped.text

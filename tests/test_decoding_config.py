"""DecodingConfig validation, labels, the --decoding grid syntax and YAML grid files."""

from __future__ import annotations

import pytest

from evalkit.decoding import DecodingConfig, load_decoding_file, parse_decoding
from evalkit.errors import EvalkitError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"temperature": 1.0, "top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"num_beams": 0}, "num_beams must be >= 1"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences (3) must be <= num_beams (2)"),
        ({"num_beams": 4, "temperature": 0.7}, "cannot be combined with beam search"),
        ({"num_beams": 4, "top_k": 50}, "cannot be combined with beam search"),
        ({"top_p": 0.9}, "need sampling: set temperature > 0"),
        ({"num_return_sequences": 2}, "greedy decoding returns one sequence"),
        ({"length_penalty": 0.6}, "only apply to beam search"),
        ({"num_beams": 2, "early_stopping": "sometimes"}, "early_stopping must be"),
        ({"temperature": 1.0, "top_k": 0}, "top_k must be >= 1"),
        ({"temperature": 1.0, "min_p": 2.0}, "min_p must be in [0, 1]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"frequency_penalty": 3.0}, "frequency_penalty must be in [-2, 2]"),
        ({"no_repeat_ngram_size": 0}, "no_repeat_ngram_size must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"max_new_tokens": 4, "min_new_tokens": 8}, "min_new_tokens (8) exceeds max_new_tokens (4)"),
        ({"stop": ("",)}, "stop strings must be non-empty"),
        ({"temperature": "hot"}, "temperature must be a number"),
    ],
)
def test_invalid_configs_give_one_line_errors(settings, fragment):
    with pytest.raises(EvalkitError) as info:
        DecodingConfig(**settings)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_valid_configs_and_labels():
    assert DecodingConfig().label == "greedy"
    assert DecodingConfig(temperature=0.7, top_p=0.9).label == "temp0.7+top-p0.9"
    beam = DecodingConfig(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2)
    assert beam.label == "beam4+lp0.6+early+n2"
    assert DecodingConfig(num_beams=3, early_stopping="never").label == "beam3+early-never"
    assert DecodingConfig(name="mine", temperature=1.0).label == "mine"
    described = DecodingConfig(temperature=0.7, top_p=0.9).describe()
    assert described == "temp0.7+top-p0.9 (temperature=0.7, top_p=0.9)"
    # The cache key ignores the name: equal algorithms share cached responses.
    assert DecodingConfig(name="a", temperature=0.5).key() == DecodingConfig(temperature=0.5).key()
    assert DecodingConfig(temperature=0.5).key() != DecodingConfig(temperature=0.6).key()
    assert DecodingConfig.from_dict(beam.to_dict()) == beam
    assert DecodingConfig(stop=["\n\n"]).stop == ("\n\n",)


def test_parse_decoding_presets():
    configs = parse_decoding("greedy,beam4,temp0.7,top-k50,top-p0.9,min-p0.05,rep1.2,freq0.5,pres0.5")
    by_label = {c.label: c for c in configs}
    assert list(by_label) == ["greedy", "beam4", "temp0.7", "top-k50", "top-p0.9", "min-p0.05", "rep1.2",
                              "freq0.5", "pres0.5"]
    assert by_label["greedy"] == DecodingConfig(name="greedy")
    assert by_label["beam4"].num_beams == 4 and not by_label["beam4"].do_sample
    assert by_label["temp0.7"].temperature == 0.7
    # Sampling filters alone sample at temperature 1, as the OpenAI API and vLLM do.
    assert (by_label["top-k50"].top_k, by_label["top-k50"].temperature) == (50, 1.0)
    assert (by_label["top-p0.9"].top_p, by_label["top-p0.9"].temperature) == (0.9, 1.0)
    assert by_label["min-p0.05"].min_p == 0.05
    # Penalties alone decorate greedy decoding.
    assert (by_label["rep1.2"].repetition_penalty, by_label["rep1.2"].temperature) == (1.2, 0.0)
    assert by_label["freq0.5"].frequency_penalty == 0.5
    assert by_label["pres0.5"].presence_penalty == 0.5


def test_parse_decoding_combinations():
    nucleus, beam, rich = parse_decoding("temp0.7+top-p0.95, beam4+lp0.6+early+n2 ,typical0.9+ngram3+seed7+max32")
    assert (nucleus.temperature, nucleus.top_p) == (0.7, 0.95)
    assert (beam.num_beams, beam.length_penalty, beam.early_stopping, beam.num_return_sequences) == (4, 0.6, True, 2)
    assert (rich.typical_p, rich.no_repeat_ngram_size, rich.seed, rich.max_new_tokens) == (0.9, 3, 7, 32)
    assert parse_decoding("beam3+early-never")[0].early_stopping == "never"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("greedy,nucleus", "unknown decoding strategy 'nucleus'"),
        ("top-p", "unknown decoding strategy 'top-p'"),
        ("", "decoding='' is empty"),
        ("beam4+temp0.7", "cannot be combined with beam search"),
        ("top-p1.5", "top_p must be in (0, 1]"),
        ("temp0.7+temp0.8", "sets temperature twice"),
        ("greedy,greedy", "appears twice"),
    ],
)
def test_parse_decoding_errors(spec, fragment):
    with pytest.raises(EvalkitError) as info:
        parse_decoding(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_valid_forms():
    with pytest.raises(EvalkitError) as info:
        parse_decoding("nucleus")
    for form in ("greedy", "beamN", "tempT", "top-kK", "top-pP", "min-pP", "repR", "freqF", "presP"):
        assert form in str(info.value)


def test_load_decoding_file_strategies_grid_and_base(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "base: {max_new_tokens: 64, seed: 3}\n"
        "strategies:\n"
        "  - beam4+lp0.6\n"
        "  - {name: nucleus, temperature: 0.7, top_p: 0.9, stop: [\"\\n\\n\"]}\n"
        "grid:\n"
        "  temperature: [0.5, 1.0]\n"
        "  top_k: [20, 50]\n"
    )
    configs = load_decoding_file(path)
    assert [c.label for c in configs] == [
        "beam4+lp0.6", "nucleus", "temp0.5+top-k20", "temp0.5+top-k50", "temp1+top-k20", "temp1+top-k50",
    ]
    assert all(c.max_new_tokens == 64 and c.seed == 3 for c in configs)
    assert configs[1].stop == ("\n\n",)
    assert configs[0].num_beams == 4


def test_load_decoding_file_plain_list(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("- greedy\n- {num_beams: 2, early_stopping: never}\n")
    greedy, beam = load_decoding_file(path)
    assert greedy.label == "greedy" and beam.early_stopping == "never"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("strategies:\n  - {temperature: 0.7, top_pp: 0.9}\n", "unknown decoding setting(s) top_pp"),
        ("stratgies:\n  - greedy\n", "unknown top-level key(s) stratgies"),
        ("strategies: [greedy\n", "is not valid YAML"),
        ("strategies:\n  - {num_beams: 2, temperature: 1.0}\n", "cannot be combined with beam search"),
        ("strategies:\n  - nucleus\n", "unknown decoding strategy 'nucleus'"),
        ("strategies: []\n", "defines no strategy"),
        ("grid: {temperature: [0.7, 0.7]}\n", "appears twice"),
        ("42\n", "must hold a list of strategies"),
    ],
)
def test_load_decoding_file_errors(tmp_path, text, fragment):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(EvalkitError) as info:
        load_decoding_file(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_decoding_file(tmp_path):
    with pytest.raises(EvalkitError, match="does not exist"):
        load_decoding_file(tmp_path / "nope.yaml")


def test_list_presets_names_every_form():
    from evalkit.decoding import list_presets

    forms = dict(list_presets())
    assert {"greedy", "beamN", "top-pP", "min-pP", "repR", "freqF", "presP", "lpX", "nN"} <= set(forms)
    assert all(description for description in forms.values())


def test_decoding_file_not_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"strategies:\n  - greedy\n  - caf\xe9\n")
    with pytest.raises(EvalkitError) as err:
        load_decoding_file(path)
    message = str(err.value)
    assert "\n" not in message and "line 3" in message and "0xe9" in message and "UTF-8" in message

"""Chat templates: evalkit renders the prompts lm-evaluation-harness 0.4.13 renders, and scores them alike.

The reference is lm-eval's own code: its task classes build the contexts
(``build_all_requests``) and its ``HFLM.apply_chat_template`` renders them,
called with the same tokenizer; for scores, lm-eval's ``simple_evaluate``
runs the same model (``add_bos_token=False``: the GGUF-converted tokenizer
must not prepend a BOS, see README).
"""

from __future__ import annotations

import json
import shutil
import types
from functools import partial
from pathlib import Path

import pytest
import transformers

import evalkit
from evalkit.errors import EvalkitError
from evalkit.models.registry import resolve_model_path
from evalkit.tasks import get_task
from evalkit.tasks.chat import PromptFormat, resolve_template

SYSTEM = "You are a careful reader. Answer with the most plausible option."
HELLASWAG = "hellaswag/hellaswag_val.rows_0000-1999.jsonl"

pytestmark = pytest.mark.integration  # the real SmolLM2 tokenizer and weights, lm-eval's renderer and evaluator


def _lm_eval_renderer(tokenizer):
    """lm-eval's HFLM.apply_chat_template itself, bound to the tokenizer alone (no weights needed to render)."""
    from lm_eval.models.huggingface import HFLM

    return partial(HFLM.apply_chat_template, types.SimpleNamespace(tokenizer=tokenizer, chat_template_args={}))


def _lm_eval_contexts(task_dir: Path, name: str, limit: int, tokenizer, **options) -> dict[int, list[tuple]]:
    """Every request's arguments as lm-eval builds them for a task YAML, keyed by document."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(task_dir)).load_task_or_group([name])[name]
    chat = options.get("apply_chat_template", False)
    task.build_all_requests(limit=limit, chat_template=_lm_eval_renderer(tokenizer) if chat else None, **options)
    contexts: dict[int, list[tuple]] = {}
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        contexts.setdefault(instance.doc_id, []).append(instance.arguments)
    return contexts


def _gsm8k_files(data_dir: Path, tmp_path: Path) -> None:
    """Five test problems to answer and ten others as the few-shot pool (rows 1000-1009)."""
    rows = (data_dir / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "docs.jsonl").write_text("\n".join(rows[:5]) + "\n", encoding="utf-8")
    (tmp_path / "pool.jsonl").write_text("\n".join(rows[1000:1010]) + "\n", encoding="utf-8")


def _gsm8k_yamls(tmp_path: Path, gen_prefix: str | None, shots: int) -> None:
    """The same generation task for both harnesses: GSM8K's prompt, the first k pool rows as examples."""
    prefix = f"gen_prefix: {json.dumps(gen_prefix)}\n" if gen_prefix else ""
    (tmp_path / "chat_gsm8k.yaml").write_text(
        "task: chat_gsm8k\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{train: {tmp_path}/pool.jsonl, test: {tmp_path}/docs.jsonl}}}}\n"
        "output_type: generate_until\ntraining_split: train\nfewshot_split: train\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        f"{prefix}num_fewshot: {shots}\nfewshot_config: {{sampler: first_n}}\n"
        'generation_kwargs: {until: ["Question:"]}\nmetric_list: [{metric: exact_match}]\n'
    )
    (tmp_path / "evalkit_gsm8k.yaml").write_text(
        "name: chat-gsm8k\noutput_type: generate_until\ndataset: {path: ./docs.jsonl}\n"
        'doc_to_text: "Question: {{ question }}\\nAnswer:"\ndoc_to_target: "{{ answer }}"\nreference: answer\n'
        f"{prefix}fewshot: {{num: {shots}, sampler: first_n, path: ./pool.jsonl}}\n"
        'generation: {stop: ["Question:"]}\nmetrics: [exact_match]\n'
    )


@pytest.mark.parametrize("gen_prefix", [None, "The answer is"])
@pytest.mark.parametrize(
    "chat, multiturn, shots",
    [(False, False, 0), (False, False, 3), (True, False, 0), (True, False, 3), (True, True, 3)],
    ids=["plain-0shot", "plain-3shot", "chat-0shot", "chat-3shot", "chat-3shot-multiturn"],
)
def test_generation_prompts_equal_lm_eval(smollm2_tokenizer, data_dir, tmp_path, chat, multiturn, shots, gen_prefix):
    """GSM8K-style generation prompts, with a system instruction: plain and chat, single- and multi-turn few-shot,
    with and without an answer prefix, each byte for byte lm-eval's context."""
    _gsm8k_files(data_dir, tmp_path)
    _gsm8k_yamls(tmp_path, gen_prefix, shots)
    theirs = _lm_eval_contexts(
        tmp_path, "chat_gsm8k", 5, smollm2_tokenizer,
        apply_chat_template=chat, fewshot_as_multiturn=multiturn, system_instruction=SYSTEM,
    )
    template = resolve_template(True, smollm2_tokenizer, "smollm2-135m") if chat else None
    fmt = PromptFormat(chat=chat, chat_template=template, system_instruction=SYSTEM, fewshot_as_multiturn=multiturn)
    ours = get_task(str(tmp_path / "evalkit_gsm8k.yaml")).instances(limit=5, fmt=fmt)
    assert len(theirs) == len(ours) == 5
    for instance in ours:
        assert instance.prompt == theirs[instance.doc_id][0][0]
    if chat:
        assert ours[0].prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
        assert ours[0].requests[0].messages[0] == ("system", SYSTEM)
        assert ours[0].requests[0].stop == ("Question:", "<|im_end|>")  # the template's end of turn stops generation
        turns = [role for role, _ in ours[0].requests[0].messages]
        expected = ["system"] + (["user", "assistant"] * shots if multiturn else []) + ["user"]
        assert turns == expected + (["assistant"] if gen_prefix else [])


def test_multiple_choice_contexts_and_continuations_equal_lm_eval(smollm2_tokenizer, data_dir, tmp_path, load_benchmark):
    """HellaSwag with the template: each context is lm-eval's, and each ending follows it without the delimiter."""
    parity = load_benchmark("lm_eval_parity")
    (tmp_path / "parity_hellaswag.yaml").write_text(parity.HELLASWAG_YAML.format(data=data_dir / HELLASWAG))
    theirs = _lm_eval_contexts(tmp_path, "parity_hellaswag", 30, smollm2_tokenizer, apply_chat_template=True, system_instruction=SYSTEM)
    fmt = PromptFormat(chat=True, chat_template=resolve_template(True, smollm2_tokenizer, "smollm2-135m"), system_instruction=SYSTEM)
    ours = get_task("hellaswag", str(data_dir)).instances(limit=30, fmt=fmt)
    for instance in ours:
        assert [(r.context, r.continuation) for r in instance.requests] == [tuple(a) for a in theirs[instance.doc_id]]


def test_hellaswag_with_template_scores_equal_lm_eval(smollm2, data_dir, tmp_path, load_benchmark):
    """Run end to end on both harnesses: every sample's prompt is lm-eval's context, acc/acc_norm equal to 4 decimals."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    parity = load_benchmark("lm_eval_parity")
    limit = 24
    (tmp_path / "parity_hellaswag.yaml").write_text(parity.HELLASWAG_YAML.format(data=data_dir / HELLASWAG))
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={resolve_model_path('smollm2-135m')},dtype=float32,add_bos_token=False",
        tasks=["parity_hellaswag"], task_manager=TaskManager(include_path=str(tmp_path)), limit=limit,
        batch_size=8, device="cpu", apply_chat_template=True, system_instruction=SYSTEM, log_samples=True,
    )
    ours = evalkit.evaluate(
        smollm2, tasks="hellaswag", limit=limit, data_dir=data_dir, cache=False, bootstrap=0,
        apply_chat_template=True, system_instruction=SYSTEM, output_dir=tmp_path / "run",
    )
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples" / "hellaswag__loglikelihood.jsonl").open()]
    for theirs in out["samples"]["parity_hellaswag"]:
        assert samples[theirs["doc_id"]]["prompt"] == theirs["arguments"][0][0]
    scores, reference = ours["results"]["hellaswag"]["loglikelihood"], out["results"]["parity_hellaswag"]
    assert round(scores["acc"], 4) == round(reference["acc,none"], 4)
    assert round(scores["acc_norm"], 4) == round(reference["acc_norm,none"], 4)
    prompt = ours["meta"]["prompt"]
    assert prompt["chat_template"] is True and prompt["chat_template_source"] == "tokenizer"
    assert prompt["chat_template_sha256"] == resolve_template(True, smollm2.tokenizer, "x").sha256
    assert prompt["system_instruction"] == SYSTEM and prompt["fewshot_as_multiturn"] is False


def test_native_and_hf_backends_give_the_same_prompts_and_acc(smollm2, data_dir, tmp_path):
    """100 HellaSwag items with the template: the native engine sees the same prompts and scores the same acc."""
    runs = {}
    for backend, model in (("hf", smollm2), ("native", "smollm2-135m")):
        runs[backend] = evalkit.evaluate(
            model, tasks="hellaswag", limit=100, data_dir=data_dir, cache=False, bootstrap=0, backend=backend,
            apply_chat_template=True, output_dir=tmp_path / backend,
        )
    prompts = {
        backend: [json.loads(line)["prompt"] for line in (tmp_path / backend / "samples" / "hellaswag__loglikelihood.jsonl").open()]
        for backend in runs
    }
    assert prompts["hf"] == prompts["native"] and prompts["hf"][0].startswith("<|im_start|>system\n")
    hf, native = (runs[b]["results"]["hellaswag"]["loglikelihood"] for b in ("hf", "native"))
    assert hf["acc"] == native["acc"] and hf["acc_norm"] == native["acc_norm"]


def test_template_without_system_role_drops_the_system_message_as_lm_eval(smollm2_tokenizer, data_dir, tmp_path):
    """A template that raises on a system message (as Gemma's and Mistral's do) renders without it, as lm-eval retries."""
    text = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
    )
    path = tmp_path / "no_system.jinja"
    path.write_text(text)
    template = resolve_template(str(path), smollm2_tokenizer, "smollm2-135m")
    assert template.source == f"file:{path}" and template.end_of_turn() == "<end_of_turn>"
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer.name_or_path)
    their_tokenizer.chat_template = text
    render = _lm_eval_renderer(their_tokenizer)
    fmt = PromptFormat(chat=True, chat_template=template, system_instruction=SYSTEM)
    for instance in get_task("hellaswag", str(data_dir)).instances(limit=3, fmt=fmt):
        assert instance.prompt == render(instance.messages) and SYSTEM not in instance.prompt


def test_templated_and_plain_runs_never_share_cached_answers(smollm2_folder, tmp_path, cached_rows):
    """Loaded by name (a live model object is never cached): the templated run computes every answer anew."""
    cache = tmp_path / "responses.sqlite"
    common = dict(tasks="demo-choice", cache=cache, bootstrap=0)
    plain = evalkit.evaluate("smollm2-135m", **common)
    after_plain = cached_rows(cache)
    chat = evalkit.evaluate("smollm2-135m", apply_chat_template=True, **common)
    after_chat = cached_rows(cache)
    assert after_plain > 0 and after_chat == 2 * after_plain
    again = evalkit.evaluate("smollm2-135m", apply_chat_template=True, **common)
    assert cached_rows(cache) == after_chat and again["results"] == chat["results"]
    assert plain["meta"]["prompt"]["chat_template"] is False and chat["meta"]["prompt"]["chat_template"] is True


# ----------------------------------------------------------------- bad input: one line, exit 2, nothing written


def test_fewshot_as_multiturn_needs_the_template(one_line_error, tmp_path):
    out = tmp_path / "out"
    one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", "demo", "--fewshot-as-multiturn", "--output", str(out)],
        "--fewshot-as-multiturn", "--apply-chat-template",
    )
    assert not out.exists()
    with pytest.raises(EvalkitError, match="fewshot_as_multiturn=True needs apply_chat_template"):
        evalkit.evaluate("smollm2-135m", tasks="demo", fewshot_as_multiturn=True)


@pytest.mark.parametrize(
    "content, needles",
    [
        (b"{% for m in messages %}\n{{ m['content'] }}\n{% endfor\n", ["line 3"]),  # Jinja syntax error
        (b"", ["does not render the messages' content"]),  # would score every item on an empty prompt
        ("{{ messages[0]['content'] }} caf\xe9".encode("latin-1"), ["line 1", "byte offset 32", "0xe9"]),  # not UTF-8
    ],
    ids=["syntax-error", "empty", "not-utf8"],
)
def test_bad_template_file_is_one_line_naming_it(one_line_error, tmp_path, content, needles):
    """A broken template file: one line naming the file and what is wrong, nothing written."""
    path = tmp_path / "template.jinja"
    path.write_bytes(content)
    out = tmp_path / "out"
    one_line_error(
        ["run", "--model", "smollm2-135m", "--tasks", "demo", "--apply-chat-template", str(path), "--output", str(out)],
        str(path), *needles,
    )
    assert not out.exists()


def test_model_without_a_chat_template(one_line_error, smollm2_folder, tmp_path):
    """A base model (the converted folder without its template) given --apply-chat-template."""
    folder = tmp_path / "base-model"
    shutil.copytree(smollm2_folder, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    out = tmp_path / "out"
    one_line_error(
        ["run", "--model", str(folder), "--tasks", "demo-choice", "--apply-chat-template", "--output", str(out), "--no-cache"],
        "has no chat template", "--apply-chat-template PATH",
    )
    assert not out.exists()


def test_lm_eval_bridge_renders_as_lm_eval_hf(smollm2, smollm2_tokenizer):
    """`evalkit-lm-eval --apply_chat_template` renders through evalkit exactly as lm-eval's hf model would."""
    from evalkit.integrations.lm_eval_model import EvalkitLM

    bridge, theirs = EvalkitLM(smollm2), _lm_eval_renderer(smollm2_tokenizer)
    assert bridge.chat_template(True) == smollm2_tokenizer.chat_template
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2 + 2 = ?"}]
    assert bridge.apply_chat_template(history) == theirs(history)
    history.append({"role": "assistant", "content": "The answer is"})
    assert bridge.apply_chat_template(history, add_generation_prompt=False) == theirs(history, add_generation_prompt=False)


def test_lm_eval_tasks_are_built_with_the_chat_format(smollm2_tokenizer, data_dir):
    """`--tasks lm_eval:NAME --apply-chat-template`: lm-eval's own builder renders with evalkit's template."""
    from evalkit.tasks.lm_eval import lm_eval_tasks

    (task,) = lm_eval_tasks("hellaswag", str(data_dir))
    template = resolve_template(True, smollm2_tokenizer, "smollm2-135m")
    plain = task.instances(limit=3)
    chat = task.instances(limit=3, fmt=PromptFormat(chat=True, chat_template=template, system_instruction=SYSTEM))
    for p, c in zip(plain, chat):
        conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.prompt}]
        assert c.prompt == template.render(conversation, add_generation_prompt=True)
        assert [" " + r.continuation for r in c.requests] == [r.continuation for r in p.requests]

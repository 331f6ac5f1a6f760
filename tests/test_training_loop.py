"""evalkit inside a training loop: a tiny LLaMA trained on WikiText-2 with evalkit's perplexity logged by callbacks.

The model is random-init (2 layers, hidden 16) with the real SmolLM2 tokenizer,
so training is cheap on a CPU while the vocabulary, the tokenizer and the
wikitext2 task are the real ones. Article 0 of the WikiText-2 test file is the
evaluation text (``--tasks wikitext2 --limit 1``); the model trains on the
other articles.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import evalkit
from evalkit.integrations.callbacks import EvalkitCallback
from evalkit.tasks.loaders import split_wikitext_articles

pytestmark = pytest.mark.integration

SEQ_LEN = 32
STEPS = 200
EVERY = 50
PPL = "wikitext2/word_perplexity"


def tiny_llama(tokenizer, hidden: int = 16, layers: int = 2, seed: int = 0) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


class Chunks(torch.utils.data.Dataset):
    """Training text cut into SEQ_LEN-token examples (labels = inputs; the model shifts them)."""

    def __init__(self, ids: list[int]) -> None:
        n = len(ids) // SEQ_LEN
        self.rows = torch.tensor(ids[: n * SEQ_LEN]).view(n, SEQ_LEN)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


@pytest.fixture(scope="module")
def trained(smollm2_tokenizer, tmp_path_factory, data_dir):
    """Train with the Trainer and EvalkitCallback; return the model, the callback and the trainer's log."""
    articles = split_wikitext_articles((data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text(encoding="utf-8"))
    train_ids = smollm2_tokenizer.encode("".join(a["page"] for a in articles[1:12]))
    model = tiny_llama(smollm2_tokenizer)
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("trainer")), max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=5e-3, warmup_steps=10, logging_steps=EVERY, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Chunks(train_ids), processing_class=smollm2_tokenizer)
    callback = EvalkitCallback.attach(trainer, tasks="wikitext2", every=EVERY, limit=1, data_dir=data_dir)
    started = time.perf_counter()
    trainer.train()
    print(f"\n{STEPS} steps with {len(callback.history)} evaluations: {time.perf_counter() - started:.1f} s")
    return model, callback, trainer.state.log_history, pointers


def test_callback_perplexity_falls_during_training(trained):
    _model, callback, log_history, _ = trained
    steps = [step for step, _ in callback.history]
    ppl = [metrics[PPL] for _, metrics in callback.history]
    print("step -> wikitext2 word perplexity:", dict(zip(steps, [round(p) for p in ppl])))
    assert steps == list(range(0, STEPS + 1, EVERY))
    assert ppl[-1] < ppl[0] / 10  # random init is near-uniform over 49k tokens; training learns the text's statistics
    assert all(later < earlier * 1.05 for earlier, later in itertools.pairwise(ppl))
    logged = {entry["step"]: entry[PPL] for entry in log_history if PPL in entry}  # through trainer.log
    assert logged == dict(zip(steps, ppl))
    assert {"wikitext2/byte_perplexity", "wikitext2/bits_per_byte"} <= set(callback.history[-1][1])


def test_training_updates_the_evaluated_weights_in_place(trained):
    """The optimizer and evalkit saw the same tensors all along: no parameter was replaced by a copy or a reload."""
    model, _, _, pointers = trained
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers


def test_evaluate_overhead_on_100_items(trained, smollm2_tokenizer, data_dir, monkeypatch):
    """evaluate() every N steps on 100 HellaSwag items (400 loglikelihood requests): a repeated call builds no prompt anew.

    The timings are printed for the record; the assertion is on the work itself (a timed assertion is noise on a
    shared machine, and an earlier test of the session may already have built these tasks).
    """
    from evalkit.tasks.task import Task

    built = []
    instances = Task.instances
    monkeypatch.setattr(Task, "instances", lambda self, *a, **kw: built.append(self.name) or instances(self, *a, **kw))
    model = trained[0]
    timings, model_s, scores, built_per_call = [], [], [], []
    for _ in range(2):
        built.clear()
        started = time.perf_counter()
        results = evalkit.evaluate(model, smollm2_tokenizer, tasks="hellaswag", limit=100, data_dir=data_dir, bootstrap=0)
        timings.append(time.perf_counter() - started)
        model_s.append(results["efficiency"]["hellaswag"]["loglikelihood"]["prefill_s"])  # forward passes alone
        scores.append(evalkit.flatten(results))
        built_per_call.append(list(built))
    print(
        f"\nevaluate() on 100 hellaswag items: first call {timings[0]:.2f} s (model {model_s[0]:.2f} s), "
        f"repeated call {timings[1]:.2f} s (model {model_s[1]:.2f} s)"
    )
    assert set(scores[1]) == {"hellaswag/acc", "hellaswag/acc_norm"} and scores[0] == scores[1]
    assert results["n_items"]["hellaswag"] == 100
    assert built_per_call[1] == []  # the repeated call reuses the first call's tasks and prompts


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/self/status")


def test_evaluate_makes_no_copy_of_the_weights(smollm2_tokenizer, data_dir):
    """Peak resident memory during evaluate() grows by less than the model's own size (a copy would double it)."""
    model = tiny_llama(smollm2_tokenizer, hidden=256, layers=1)  # 13M parameters, 50 MB: larger than evaluation's activations
    model_kib = sum(p.numel() * p.element_size() for p in model.parameters()) // 1024
    kwargs = dict(tasks="hellaswag", limit=10, data_dir=data_dir, bootstrap=0, batch_size=2, flat=True)
    evalkit.evaluate(model, smollm2_tokenizer, **kwargs)  # warm-up: task data, imports, allocator pools

    def peak_growth_kib(action) -> int:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        before = _rss_kib("VmRSS")
        action()
        return _rss_kib("VmHWM") - before

    peak = peak_growth_kib(lambda: evalkit.evaluate(model, smollm2_tokenizer, **kwargs))
    # The measurement does see a copy of the weights: freed heap goes back to the OS first, so the copy
    # cannot hide in pages an earlier test freed (in a long session it otherwise can measure 0).
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    control = peak_growth_kib(lambda: copy.deepcopy(model))
    print(
        f"\nmodel {model_kib / 1024:.0f} MiB; peak RSS growth: evaluate() {peak / 1024:.1f} MiB, "
        f"deepcopy(model) {control / 1024:.1f} MiB"
    )
    assert control > model_kib * 0.9
    assert peak < model_kib / 2


def test_evaluate_restores_modes_and_random_state(smollm2_tokenizer):
    model = tiny_llama(smollm2_tokenizer)
    model.train()
    model.model.layers[0].eval()  # a submodule the caller keeps frozen must stay in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    flat = evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-arith", decoding="greedy,temp0.7", limit=2, bootstrap=0, flat=True)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    # several strategies ran for a generation task: the decoding label is part of each key
    assert {"demo-arith/greedy/exact_match", "demo-arith/temp0.7/exact_match"} <= set(flat)
    assert not any(key.endswith("_ci") for key in flat)


def test_every_skips_steps_that_are_not_due(smollm2_tokenizer):
    model = tiny_llama(smollm2_tokenizer)
    assert evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-lm", every=50, step=49) == {}
    assert evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-lm", limit=2, every=50, step=100, bootstrap=0, flat=True)
    with pytest.raises(evalkit.EvalkitError, match="step"):
        evalkit.evaluate(model, smollm2_tokenizer, tasks="demo-lm", every=50)


def test_lightning_callback_logs_evalkit_metrics(smollm2_tokenizer, tmp_path, data_dir):
    import pytorch_lightning as pl

    from evalkit.integrations.callbacks import EvalkitLightningCallback

    articles = split_wikitext_articles((data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text(encoding="utf-8"))
    data = Chunks(smollm2_tokenizer.encode(articles[1]["page"]))

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_llama(smollm2_tokenizer)

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    callback = EvalkitLightningCallback(tokenizer=smollm2_tokenizer, tasks="wikitext2", every=10, limit=1, data_dir=data_dir)
    trainer = pl.Trainer(
        max_steps=20, accelerator="cpu", devices=1, callbacks=[callback], logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert [step for step, _ in callback.history] == [0, 10, 20]
    ppl = [metrics[PPL] for _, metrics in callback.history]
    assert ppl[-1] < ppl[0]
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert PPL in logged.splitlines()[0]

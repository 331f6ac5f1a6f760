"""Train a small LLaMA-style model from scratch and log evalkit metrics while it trains.

The model is randomly initialised (a few layers, the SmolLM2 tokenizer) and
trained with the transformers ``Trainer`` on WikiText-2 text; every
``--every`` steps :class:`evalkit.integrations.callbacks.EvalkitCallback` runs
evalkit on the live model (no copy, no reload) and logs, through
``trainer.log``, what evalkit measured::

    {'wikitext2/word_perplexity': 61803.4, 'wikitext2/byte_perplexity': 8.72, 'wikitext2/bits_per_byte': 3.12}

Run it (CPU is fine; a couple of minutes with the defaults)::

    python examples/train_with_evalkit.py --data-dir ../shared/data --steps 300 --every 100

The first WikiText-2 article is held out (``--limit 1`` on the wikitext2 task
scores exactly that article); the model trains on the others. Pass
``--report-to tensorboard`` (or wandb...) to send the metrics to a tracker;
any integration the Trainer supports receives them.

The same in a hand-written loop, without a framework::

    for step, batch in enumerate(loader):
        ...  # forward, backward, optimizer step
        metrics = evalkit.evaluate(model, tokenizer, tasks="wikitext2", limit=1, every=100, step=step, flat=True, bootstrap=0)
        if metrics:
            logger.log(metrics, step=step)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

from evalkit.integrations.callbacks import EvalkitCallback
from evalkit.models.registry import resolve_model_path
from evalkit.tasks.loaders import split_wikitext_articles


class TokenChunks(torch.utils.data.Dataset):
    """Token ids cut into fixed-length examples; the model shifts the labels itself."""

    def __init__(self, ids: list[int], length: int) -> None:
        n = len(ids) // length
        self.rows = torch.tensor(ids[: n * length]).view(n, length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="folder with wikitext2_raw/ and hellaswag/")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="evalkit model alias, hub id or folder to take the tokenizer from")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="evaluate every N optimizer steps (and at step 0)")
    parser.add_argument("--tasks", default="wikitext2", help="evalkit tasks to log, e.g. wikitext2,hellaswag (with --limit 100)")
    parser.add_argument("--limit", type=int, default=1, help="items per task at each evaluation")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--report-to", default="none", help="Trainer integrations: none, tensorboard, wandb, ...")
    parser.add_argument("--output", type=Path, default=Path("runs/train_with_evalkit"))
    args = parser.parse_args()

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model_path(args.tokenizer))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = transformers.LlamaForCausalLM(config)

    raw = (args.data_dir / "wikitext2_raw" / "wiki.test.raw.txt").read_text(encoding="utf-8")
    articles = split_wikitext_articles(raw)  # article 0 is what the wikitext2 task scores first: keep it out
    train = TokenChunks(tokenizer.encode("".join(a["page"] for a in articles[1:])), args.seq_len)

    trainer = transformers.Trainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=train,
        args=transformers.TrainingArguments(
            output_dir=str(args.output), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, warmup_steps=args.steps // 20, logging_steps=args.every,
            save_strategy="no", report_to=args.report_to, disable_tqdm=True,
        ),
    )
    callback = EvalkitCallback.attach(
        trainer, tasks=args.tasks, every=args.every, limit=args.limit, data_dir=args.data_dir
    )
    trainer.train()

    print("\nstep  " + "  ".join(callback.history[0][1]))
    for step, metrics in callback.history:
        print(f"{step:>4}  " + "  ".join(f"{value:.4g}" for value in metrics.values()))


if __name__ == "__main__":
    main()

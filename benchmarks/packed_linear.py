"""oneDNN-packed weights vs ``F.linear`` for the native engine's CPU matmuls, at decode and prefill row counts.

Streams the projection matrices of a LLaMA-family model (random values, the
model's shapes: 30 layers of SmolLM2-135M by default, plus its LM head) so no
matrix stays in cache between uses, as in a real decode step. Prints, per row
count, the time of one pass through every matrix with ``F.linear`` on the plain
``[out, in]`` weight and with :class:`evalkit.models.native.model.PackedLinear`,
and their ratio (median of ``--runs``).

    python benchmarks/packed_linear.py
    python benchmarks/packed_linear.py --rows 1,16 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.models.native.model import PackedLinear


def pass_time(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--kv-dim", type=int, default=192, help="kv_heads x head_dim")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rows", default="1,4,16,64", help="input rows; above 16 PackedLinear uses the plain weight")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, f = args.hidden, args.intermediate
    shapes = [(h + 2 * args.kv_dim, h), (h, h), (2 * f, h), (h, f)] * args.layers + [(args.vocab, h)]
    with torch.inference_mode():
        plain = [nn.Linear(i, o, bias=False) for o, i in shapes]
        packed = [PackedLinear(layer) for layer in plain]
        weight_mb = sum(o * i for o, i in shapes) * 4 / 1e6
        print(f"{len(shapes)} matrices, {weight_mb:.0f} MB fp32, threads={args.threads}, torch {torch.__version__}")
        print("| rows | F.linear ms | packed ms | F.linear / packed |")
        print("| --- | --- | --- | --- |")
        for rows in map(int, args.rows.split(",")):
            inputs = {i: torch.randn(rows, i) for _, i in shapes}
            t_plain = pass_time(lambda inputs=inputs: [F.linear(inputs[m.in_features], m.weight) for m in plain], args.runs)
            t_packed = pass_time(lambda inputs=inputs: [p(inputs[m.in_features]) for m, p in zip(plain, packed)], args.runs)
            print(f"| {rows} | {t_plain * 1e3:.1f} | {t_packed * 1e3:.1f} | {t_plain / t_packed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

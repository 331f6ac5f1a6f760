"""evalkit vs lm-evaluation-harness 0.4.13 (`hf` backend) on the same items, weights and prompts.

Both harnesses load the very same converted SmolLM2 folder, score the same
HellaSwag rows (and WikiText-2 documents) with the same prompt format, and this
script prints both numbers and both wall-clock times (model loading included).

    python benchmarks/lm_eval_parity.py --data-dir ../shared/data --limit 200 --wikitext-docs 62
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HELLASWAG_YAML = """\
task: parity_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

WIKITEXT_YAML = """\
task: parity_wikitext
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: !function parity_wikitext_utils.wikitext_detokenizer
process_results: !function parity_wikitext_utils.process_results
should_decontaminate: false
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def run_lm_eval(folder: str, task_dir: Path, task: str, limit: int | None, batch_size: int) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=[task],
        task_manager=TaskManager(include_path=str(task_dir)),
        limit=limit,
        batch_size=batch_size,
        device="cpu",
    )
    return out["results"][task], time.perf_counter() - started


def run_evalkit(task: str, data_dir: str, limit: int | None, batch_size: int) -> tuple[dict, float]:
    import evalkit

    started = time.perf_counter()
    out = evalkit.evaluate("smollm2-135m", tasks=task, limit=limit, data_dir=data_dir, batch_size=batch_size, cache=False)
    return out["results"][task]["loglikelihood"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--limit", type=int, default=200, help="HellaSwag items")
    parser.add_argument("--wikitext-docs", type=int, default=0, help="WikiText-2 documents (0: skip; 62: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from evalkit.models.registry import resolve_model_path
    from evalkit.tasks import get_task

    folder = str(resolve_model_path("smollm2-135m"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(tmp)
        hellaswag = Path(args.data_dir).resolve() / "hellaswag" / "hellaswag_val.rows_0000-1999.jsonl"
        (task_dir / "parity_hellaswag.yaml").write_text(HELLASWAG_YAML.format(data=hellaswag))
        theirs, their_s = run_lm_eval(folder, task_dir, "parity_hellaswag", args.limit, args.batch_size)
        ours, our_s = run_evalkit("hellaswag", args.data_dir, args.limit, args.batch_size)
        rows.extend((f"hellaswag/{metric} ({args.limit} items)", ours[metric], theirs[f"{metric},none"], our_s, their_s) for metric in ("acc", "acc_norm"))

        if args.wikitext_docs:
            docs = [i.reference for i in get_task("wikitext2", data_dir=args.data_dir).instances(limit=args.wikitext_docs)]
            data = task_dir / "wikitext_docs.jsonl"
            data.write_text("".join(json.dumps({"page": d}) + "\n" for d in docs))
            (task_dir / "parity_wikitext_utils.py").write_text(
                "from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer, process_results\n"
            )
            (task_dir / "parity_wikitext.yaml").write_text(WIKITEXT_YAML.format(data=data))
            theirs, their_s = run_lm_eval(folder, task_dir, "parity_wikitext", None, args.batch_size)
            ours, our_s = run_evalkit("wikitext2", args.data_dir, args.wikitext_docs, args.batch_size)
            rows.extend(
                (f"wikitext2/{metric} ({len(docs)} docs)", ours[metric], theirs[f"{metric},none"], our_s, their_s)
                for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte")
            )

    print(f"{'metric':38s} {'evalkit':>10s} {'lm-eval':>10s} {'evalkit s':>10s} {'lm-eval s':>10s}")
    for name, mine, theirs, my_s, their_s in rows:
        print(f"{name:38s} {mine:10.4f} {theirs:10.4f} {my_s:10.1f} {their_s:10.1f}")


if __name__ == "__main__":
    main()

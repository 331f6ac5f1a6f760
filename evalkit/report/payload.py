"""The sample browser's data: every prompt, reference, output and per-sample score, as compact JSON.

Ten runs x five tasks x six strategies x 500 samples repeat each prompt and
reference sixty times, so every string goes once into a table and records
refer to it by index. The page parses this once and renders only the rows on
screen.
"""

from __future__ import annotations

import json

from evalkit.report.leaderboard import Leaderboard

# Characters that could end the <script> element or break a JS/HTML parser; JSON allows them escaped.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class StringTable:
    def __init__(self) -> None:
        self.strings: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        """The index of ``text``; -1 stands for "no text" so empty fields cost nothing."""
        if not text:
            return -1
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.strings)
            self.strings.append(text)
        return index


def sample_payload(board: Leaderboard) -> dict:
    """{"strings": [...], "tasks": [{"name", "metrics", "docs": [[id, prompt, reference]], "columns": [...]}]}.

    Other fields are interned key by key, so a field that repeats the output
    (a task's ``filtered`` answer, say) costs one index, not a second copy.
    """
    table = StringTable()
    tasks = []
    for task in board.tasks:
        order: dict[str, int] = {}
        docs: list[list[int]] = []
        for cell in task.cells:
            for sample in cell.samples:
                if sample.doc_id not in order:
                    order[sample.doc_id] = len(docs)
                    docs.append([table.add(sample.doc_id), table.add(sample.prompt), table.add(sample.reference)])
        prompts = [table.strings[d[1]] if d[1] >= 0 else "" for d in docs]
        columns = []
        for cell in task.cells:
            if not cell.samples:
                continue
            run = board.runs[cell.run]
            outputs: list[int] = [-1] * len(docs)
            other: list[list[int] | None] = [None] * len(docs)  # [key, value, key, value, ...] string indices
            scores: dict[str, list[float | None]] = {}
            for sample in cell.samples:
                position = order[sample.doc_id]
                outputs[position] = table.add(sample.output)
                fields = dict(sample.other)
                if sample.prompt != prompts[position]:  # another prompt format: this run's own prompt goes with it
                    fields = {"prompt": sample.prompt, **fields}
                other[position] = [table.add(text) for pair in fields.items() for text in pair] or None
                for metric, value in sample.scores.items():
                    scores.setdefault(metric, [None] * len(docs))[position] = float(f"{value:.6g}")
            columns.append(
                {
                    "run": run.name,
                    "model": run.model,
                    "backend": run.backend,
                    "prompt": run.prompt_label,
                    "decoding": cell.label,
                    "outputs": outputs,
                    "other": other,
                    "scores": scores,
                }
            )
        metrics = list(dict.fromkeys(m for column in columns for m in column["scores"]))
        tasks.append({"name": task.name, "metrics": metrics, "docs": docs, "columns": columns})
    return {"strings": table.strings, "tasks": tasks}


def script_json(value: object) -> str:
    """JSON that is safe inside <script type="application/json">: nothing in it can close the element."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_SCRIPT_ESCAPES)

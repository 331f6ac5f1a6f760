"""BERTScore through bert-score: any model (hub id or local folder), layer, idf and baseline recorded.

The encoder is loaded once per process (cache keyed by model, layer count and
device) so a training loop that evaluates every few steps does not reload it.
Scoring follows ``bert_score.score`` step by step with the library's own
functions; ``bert_cos_score_idf`` deduplicates the sentences and sorts them by
length before batching, so batches carry little padding.

The signature names the encoder by content (see
:mod:`evalkit.metrics.artefacts`): a local folder is
``local:<architecture>@<weights hash>``, never its folder name; a hub id is
recorded with the commit the cache holds. Versions come from the installed
packages' metadata.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from typing import Any

import numpy as np

from evalkit.devices import default_device
from evalkit.errors import EvalkitError
from evalkit.metrics.artefacts import model_identity
from evalkit.metrics.corpus import MeanMetric, check_lengths, reference_lists
from evalkit.metrics.signature import make_signature, version
from evalkit.quiet import library_output

_ENCODERS: dict[tuple[str, int, str], tuple[Any, Any]] = {}




def load_encoder(model_type: str, num_layers: int, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) truncated to ``num_layers``, cached for the life of the process."""
    key = (model_type, num_layers, device)
    if key not in _ENCODERS:
        from bert_score.utils import get_model, get_tokenizer

        try:
            with library_output():
                tokenizer = get_tokenizer(model_type, False)
                model = get_model(model_type, num_layers, False)
        except OSError as error:
            raise EvalkitError(f"bertscore: cannot load model {model_type!r} ({str(error).splitlines()[0]}); give a hub id or a local model folder") from None
        _ENCODERS[key] = (model.to(device), tokenizer)
    return _ENCODERS[key]


class BERTScore(MeanMetric):
    """BERTScore F1 per item (P and R corpus means in ``extra``); several references take the best."""

    name = "bertscore"
    description = "BERTScore F1 (bert-score), any encoder, idf and baseline rescaling recorded"

    def __init__(
        self,
        model: str = "roberta-large",
        num_layers: int | None = None,
        idf: bool = False,
        rescale_with_baseline: bool = False,
        baseline_path: str | None = None,
        lang: str = "en",
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        from bert_score.utils import model2layers

        if num_layers is None:
            if model not in model2layers:
                raise EvalkitError(f'bertscore: model {model!r} has no default layer in bert-score; pass options["bertscore"]["num_layers"]=N')
            num_layers = model2layers[model]
        self.model = model
        self.num_layers = num_layers
        self.idf = idf
        self.rescale_with_baseline = rescale_with_baseline
        self.baseline_path = baseline_path
        self.lang = lang
        self.batch_size = batch_size
        self.device = device
        self._prf: np.ndarray | None = None

    def _baseline(self):
        import pandas as pd
        import torch

        path = self.baseline_path or os.path.join(
            os.path.dirname(__import__("bert_score").__file__), f"rescale_baseline/{self.lang}/{self.model}.tsv"
        )
        if not os.path.isfile(path):
            raise EvalkitError(f'bertscore: no rescaling baseline for {self.model} ({self.lang}) at {path}; pass options["bertscore"]["baseline_path"]=FILE')
        return torch.from_numpy(pd.read_csv(path).iloc[self.num_layers].to_numpy())[1:].float()

    def precision_recall_f1(self, predictions, references) -> np.ndarray:
        """[N, 3] (P, R, F1) exactly as ``bert_score.score`` computes them."""
        import torch
        from bert_score.utils import bert_cos_score_idf, get_idf_dict

        check_lengths(predictions, references, self.name)
        groups = reference_lists(references, self.name)
        device = self.device or default_device()
        model, tokenizer = load_encoder(self.model, self.num_layers, device)
        cands = [c for c, refs in zip(predictions, groups) for _ in refs]
        refs = [r for group in groups for r in group]
        if self.idf:
            idf_dict = get_idf_dict(refs, tokenizer, nthreads=4)
        else:
            idf_dict = defaultdict(lambda: 1.0)
            idf_dict[tokenizer.sep_token_id] = 0
            idf_dict[tokenizer.cls_token_id] = 0
        all_preds = bert_cos_score_idf(model, refs, cands, tokenizer, idf_dict, device=device, batch_size=self.batch_size).cpu()
        bounds = np.cumsum([0] + [len(g) for g in groups])
        all_preds = torch.stack([all_preds[a:b].max(dim=0)[0] for a, b in itertools.pairwise(bounds)])
        if self.rescale_with_baseline:
            baseline = self._baseline()
            all_preds = (all_preds - baseline) / (1 - baseline)
        return all_preds.numpy().astype(np.float64)

    def item_scores(self, predictions, references, sources=None):
        self._prf = self.precision_recall_f1(predictions, references)
        return self._prf[:, 2]

    def extra(self, stats: np.ndarray) -> dict:
        if self._prf is None or len(self._prf) != len(stats):
            return {}
        return {"precision": float(self._prf[:, 0].mean()), "recall": float(self._prf[:, 1].mean())}

    def signature(self) -> str:
        return make_signature(
            self.name,
            model=model_identity(self.model),
            layer=self.num_layers,
            idf=self.idf,
            rescaled=("custom" if self.baseline_path else "yes") if self.rescale_with_baseline else False,
            lang=self.lang if self.rescale_with_baseline else None,
            version=version("bert-score"),
            transformers=version("transformers"),
        )

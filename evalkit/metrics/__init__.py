"""Metrics: one small class per metric (a ``CorpusMetric``), delegating to the field's own libraries.

Every result carries a signature with its settings and library versions, and
``compute_metrics`` adds a bootstrap confidence interval to each corpus score.
"""

from evalkit.metrics.base import MetricResult
from evalkit.metrics.bootstrap import PairedTest, bootstrap_ci, paired_bootstrap, paired_test
from evalkit.metrics.corpus import CorpusMetric, MeanMetric
from evalkit.metrics.registry import compute_metrics, expand_names, get_metric, list_metrics, score_items

__all__ = [
    "CorpusMetric",
    "MeanMetric",
    "MetricResult",
    "PairedTest",
    "bootstrap_ci",
    "compute_metrics",
    "expand_names",
    "get_metric",
    "list_metrics",
    "paired_bootstrap",
    "paired_test",
    "score_items",
]

"""Full-ranking evaluation: chunked scoring, masking of known positives, top-K metrics."""

from recneg.eval.metrics import METRIC_NAMES, topk_metrics
from recneg.eval.ranking import EvalResult, evaluate, evaluate_tables, rank_topk

__all__ = ["EvalResult", "evaluate", "evaluate_tables", "rank_topk", "topk_metrics", "METRIC_NAMES"]

"""SQuAD-style answer scoring (Rajpurkar et al. 2016): normalised exact match and token F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD v1.1 script's rules)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised strings (1.0 when both are empty)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval `process_results` hook: one generated answer against the document's answer."""
    prediction = results[0] if results else ""
    return {
        "exact_match": exact_match(prediction, doc["answer"]),
        "f1": f1(prediction, doc["answer"]),
    }


SQUAD_METRIC = "labkit_squad"  # the name task YAMLs use; registered by labkit, not by data


def squad_scores(references: list[str], predictions: list[str], **_: Any) -> dict[str, float]:
    """lm-eval metric `labkit_squad`: exact match and token F1 of one generated answer, as the
    keys `exact_match` and `f1` (lm-eval expands a dict result into one metric per key)."""
    prediction = predictions[0] if predictions else ""
    return {
        "exact_match": exact_match(prediction, references[0]),
        "f1": f1(prediction, references[0]),
    }


def register_lm_eval_metrics() -> None:
    """Register labkit's metrics with lm-eval (idempotent). Task YAMLs in a data set refer to them
    by name, so no task ever needs code from the data directory (`!function`)."""
    import lm_eval.api.metrics  # noqa: F401  (registers lm-eval's own aggregations, e.g. mean)
    from lm_eval.api.registry import metric_registry, register_metric

    if SQUAD_METRIC not in metric_registry:
        register_metric(metric=SQUAD_METRIC, higher_is_better=True, aggregation="mean")(
            squad_scores
        )

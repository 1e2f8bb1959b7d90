"""SQuAD-style answer scoring (Rajpurkar et al. 2016): normalised exact match and token F1.

labkit_squad's YAML scores exact match with lm-eval's own `exact_match` and SQuAD's normalisation
(`labkit.eval.tasks.SQUAD_NORMALISATION`), so the suite needs no code of labkit's under plain
`lm_eval`; `labkit eval` adds the token F1 below from lm-eval's samples."""

from __future__ import annotations

import re
import string
from collections import Counter


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

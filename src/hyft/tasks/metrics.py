"""SQuAD-style answer matching for generation tasks: exact match and token F1 against the best reference."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lowercase, drop ASCII punctuation and the articles a/an/the, collapse whitespace (the SQuAD v1.1 script)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _as_list(answers: str | list[str] | tuple[str, ...]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(pred: str, answers: str | list[str] | tuple[str, ...]) -> float:
    """1.0 if the normalised prediction equals any normalised answer, else 0.0 (0.0 for no answers)."""
    p = normalize(pred)
    return float(any(p == normalize(a) for a in _as_list(answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # SQuAD v2: two empty answers agree, one empty answer scores 0
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, answers: str | list[str] | tuple[str, ...]) -> float:
    """The best token-overlap F1 of the prediction against any answer (0.0 for no answers)."""
    p = normalize(pred).split()
    return max((_f1(p, normalize(a).split()) for a in _as_list(answers)), default=0.0)


def correct_string(hits) -> str:
    """Per-example results in split order as '0'/'1' characters: what a paired test (McNemar) of two runs scored on
    the same examples needs, one byte per example in JSON."""
    return "".join("1" if h else "0" for h in hits)

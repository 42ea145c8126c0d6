"""Per-example scores on a 0-100 scale.

Every cell of the continual-learning score matrix is the mean of these per-example scores over one
task's test set: ROUGE-L for SuperNI (generation tasks with free-form answers) and exact match for
Long Sequence (classification-style tasks with a short label). Both take a list of references and
keep the best match, as the SuperNI scorer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer

METRICS = ("em", "rougeL")

# Same settings as the SuperNI / O-LoRA / SAPT scorer (`RougeScorer(['rougeL'], use_stemmer=True)`),
# so numbers stay comparable with the published ones. The Porter stemmer only touches tokens longer
# than 3 characters ("cats running" matches "cat runs").
USE_STEMMER = True

_TRAILING_PUNCT = ".,!?;:"
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019"}


def normalize_answer(s: str) -> str:
    """Canonical form of a short answer for exact match.

    Lowercase, collapse every run of whitespace to one space, strip the ends, then repeatedly strip
    trailing punctuation (.,!?;:) and one pair of surrounding quotes, so that '"Yes."', 'yes' and
    ' YES! ' all become 'yes'. A quote pair is removed only when the quote character does not also
    occur inside (so "'a' or 'b'" is left alone). Inner punctuation is kept: 'entailment' and
    'not_entailment' must stay different labels.
    """
    s = " ".join(s.lower().split())
    prev = None
    while s != prev:
        prev = s
        s = s.rstrip(_TRAILING_PUNCT).strip()
        if len(s) >= 2 and s[0] in _QUOTE_PAIRS and s[-1] == _QUOTE_PAIRS[s[0]]:
            inner = s[1:-1]
            if s[0] not in inner and s[-1] not in inner:
                s = inner.strip()
    return s


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not a single string")
    if len(references) == 0:
        raise ValueError("need at least one reference")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100.0 if the normalized prediction equals any normalized reference, else 0.0."""
    _check_references(references)
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in references) else 0.0


@lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    # built on first use, then shared
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=USE_STEMMER)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure x 100 (longest common subsequence of tokens), max over references.

    Uses rouge_score's default tokenizer, as the SuperNI scorer does: it lowercases, replaces every
    non-alphanumeric character with a space and splits, so punctuation never counts ("Hello, world!"
    scores 100 against "hello world") and a text with no letters or digits has no tokens and scores 0,
    even against itself.
    """
    _check_references(references)
    scorer = _rouge_scorer()
    return max(100.0 * scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure for r in references)


def score_example(metric: str, prediction: str, references: Sequence[str]) -> float:
    """One example's score, 0-100, with metric "em" or "rougeL"."""
    if metric == "em":
        return exact_match(prediction, references)
    if metric == "rougeL":
        return rouge_l(prediction, references)
    raise ValueError(f"unknown metric {metric!r}, expected one of {METRICS}")


def score_task(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean per-example score over a task's predictions, 0-100."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}, expected one of {METRICS}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if len(predictions) == 0:
        raise ValueError("no predictions to score")
    return sum(score_example(metric, p, r) for p, r in zip(predictions, references)) / len(predictions)

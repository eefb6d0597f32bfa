"""ROUGE-1/2/L for Chinese: segment, join words with spaces, score with the ``rouge`` package.

For the same segmentation the numbers equal ``rouge.Rouge().get_scores`` on the space-joined text
exactly (same per-pair values, same summation order for the average). The one deliberate difference in
:func:`get_rouge`: an empty or whitespace-only prediction (or reference) scores 0 instead of raising
``ValueError: Hypothesis is empty.``. :func:`course_eval_scores` is the course's ``eval.py`` itself
(``title.strip() + "\\n"`` before segmenting, no special case), which the command line uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Sequence

from .segment import Segmenter, get_segmenter

METRICS = ("rouge-1", "rouge-2", "rouge-l")
STATS = ("r", "p", "f")

_ROUGE = None


def _rouge():
    global _ROUGE
    if _ROUGE is None:
        from rouge import Rouge

        _ROUGE = Rouge(metrics=list(METRICS), stats=list(STATS))
    return _ROUGE


def _zero_scores() -> dict[str, dict[str, float]]:
    return {m: {s: 0.0 for s in STATS} for m in METRICS}


def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def get_rouge(
    preds: str | Sequence[str],
    refs: str | Sequence[str],
    avg: bool = True,
    ignore_empty: bool = False,
    segmenter: str | Segmenter | None = None,
    ckip_dir: str | os.PathLike | None = None,
):
    """The course API: ROUGE-1/2/L recall, precision and F1 of predictions against references.

    Args:
        preds, refs: a string or a list of strings each (same length).
        avg: return the mean over pairs (one dict) instead of one dict per pair.
        ignore_empty: drop pairs whose prediction or reference is empty (the ``rouge`` package's
            meaning); otherwise such a pair scores 0.
        segmenter: ``"ckip"``, ``"jieba"``, ``"char"``, a :class:`Segmenter`, or None for
            ``$TW_ROUGE_SEGMENTER`` (default ``ckip``).
        ckip_dir: ckiptagger data dir for the ``ckip`` segmenter (default: see ``default_ckip_dir``).

    Returns:
        ``{"rouge-1": {"r", "p", "f"}, "rouge-2": {...}, "rouge-l": {...}}`` with values in [0, 1]
        (the course reports F x 100), or a list of such dicts when ``avg=False``.

    Raises:
        ValueError: different numbers of predictions and references, no pairs left, unknown segmenter.
        CkipDataMissingError: ``ckip`` segmenter without its data.
    """
    preds, refs = _as_list(preds), _as_list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions and {len(refs)} references")
    seg = get_segmenter(segmenter, ckip_dir)
    if ignore_empty:
        pairs = [(p, r) for p, r in zip(preds, refs) if p.strip() and r.strip()]
        preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    if not preds:
        raise ValueError("no prediction/reference pairs to score")
    per_pair = _score_pairs(seg.join(preds), seg.join(refs))
    return per_pair if not avg else average_scores(per_pair)


def average_scores(per_pair: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of per-pair score dicts, summed in the same order as ``rouge.Rouge._get_avg_scores``."""
    total = {m: {s: 0 for s in STATS} for m in METRICS}
    for scores in per_pair:
        total = {m: {s: total[m][s] + scores[m][s] for s in STATS} for m in METRICS}
    return {m: {s: total[m][s] / len(per_pair) for s in STATS} for m in METRICS}


def _score_pairs(joined_preds: list[str], joined_refs: list[str]) -> list[dict[str, dict[str, float]]]:
    """Score space-joined pairs with ``rouge.Rouge``; a pair with an empty side scores 0."""
    out: list[dict | None] = [None] * len(joined_preds)
    idx = [i for i, (p, r) in enumerate(zip(joined_preds, joined_refs)) if _has_words(p) and _has_words(r)]
    if idx:
        scored = _rouge_scores([joined_preds[i] for i in idx], [joined_refs[i] for i in idx])
        for i, s in zip(idx, scored):
            out[i] = s
    return [s if s is not None else _zero_scores() for s in out]


def _rouge_scores(joined_preds: list[str], joined_refs: list[str]) -> list[dict[str, dict[str, float]]]:
    """``rouge.Rouge().get_scores`` per pair. The package rebuilds the ROUGE-L subsequence recursively (one
    frame per word), so long texts would raise ``RecursionError`` under Python's default limit of 1,000:
    the limit is raised for the call to what the longest pair needs (the numbers are the package's own)."""
    longest = max((len(p.split()) + len(r.split()) for p, r in zip(joined_preds, joined_refs)), default=0)
    with _recursion_limit(longest + 500):
        return _rouge().get_scores(joined_preds, joined_refs)


@contextlib.contextmanager
def _recursion_limit(depth: int) -> Iterator[None]:
    before = sys.getrecursionlimit()
    if depth > before:
        sys.setrecursionlimit(depth)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def course_eval_scores(preds: Sequence[str], refs: Sequence[str], segmenter: str | Segmenter | None = None,
                       ckip_dir: str | os.PathLike | None = None) -> list[dict[str, dict[str, float]]]:
    """Per-pair scores exactly as the course's ``eval.py`` computes them: every title is read as
    ``title.strip() + "\\n"``, segmented, joined with spaces and scored with ``rouge.Rouge().get_scores``.

    The appended newline matters: ``rouge`` splits sentences on ASCII ``.``, so a title ending in ``.`` gets
    one more, empty, "sentence" (and with it an empty word) when the segmenter returns the newline as a
    token, as ckiptagger does. Unlike :func:`get_rouge` there is no special case for an empty title;
    only a pair the ``rouge`` package cannot score at all (where ``eval.py`` would stop with
    ``ValueError: Hypothesis is empty.``) scores 0.

    Returns:
        ``[n]`` dicts ``{"rouge-1": {"r", "p", "f"}, ...}``; average them with :func:`average_scores`.
    """
    seg = get_segmenter(segmenter, ckip_dir)
    joined_preds = seg.join([p.strip() + "\n" for p in preds])
    joined_refs = seg.join([r.strip() + "\n" for r in refs])
    out = []
    for p, r in zip(joined_preds, joined_refs):
        try:
            out.extend(_rouge_scores([p], [r]))
        except ValueError:  # "Hypothesis is empty." / "Reference is empty."
            out.append(_zero_scores())
    return out


def _has_words(joined: str) -> bool:
    # rouge splits sentences on "." and words on whitespace; text with no word scores 0 (or raises)
    return any(part.split() for part in joined.split("."))


def rouge_f_per_pair(
    preds: Sequence[str],
    refs: Sequence[str],
    weights: dict[str, float] | None = None,
    segmenter: str | Segmenter | None = None,
    ckip_dir: str | os.PathLike | None = None,
) -> list[float]:
    """Batched reward: a weighted mix of ROUGE F1 per pair, in [0, 1].

    Args:
        preds, refs: lists of equal length ``[batch]``.
        weights: metric -> weight, e.g. ``{"rouge-1": 1, "rouge-2": 1, "rouge-l": 1}`` (the default,
            giving the mean of the three F1 values). Normalised to sum to 1.

    Returns:
        ``[batch]`` floats; an empty prediction scores 0. References are segmented once and cached.
    """
    weights = weights or {m: 1.0 for m in METRICS}
    unknown = set(weights) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown ROUGE metric(s) {sorted(unknown)}; use {', '.join(METRICS)}")
    norm = sum(weights.values())
    if norm <= 0:
        raise ValueError("ROUGE reward weights must sum to a positive number")
    scores = get_rouge(list(preds), list(refs), avg=False, segmenter=segmenter, ckip_dir=ckip_dir)
    return [sum(w * s[m]["f"] for m, w in weights.items()) / norm for s in scores]

"""Degeneration statistics of generated titles: length, distinct-n and repetition.

A policy optimised for ROUGE on a weak model can drift to long titles made of frequent characters
repeated (``“中国的“大学”的“大的“大的...``): these numbers, logged at every evaluation beside ROUGE, show it.
All are computed on characters (whitespace removed), so they do not depend on a word segmenter.

- ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct character n-grams over all titles divided by all character n-grams, in ``[0, 1]``;
- ``repeated_ngram_fraction``: the share of titles in which some character n-gram occurs twice or more.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def _chars(title: str) -> list[str]:
    return [c for c in title if not c.isspace()]


def ngrams(title: str, n: int) -> list[tuple[str, ...]]:
    """The character n-grams of ``title`` (whitespace removed), in order."""
    chars = _chars(title)
    return [tuple(chars[i: i + n]) for i in range(len(chars) - n + 1)]


def distinct_n(titles: Sequence[str], n: int) -> float:
    """Distinct character n-grams / all character n-grams over ``titles`` (0 when there are none)."""
    grams = [g for t in titles for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_fraction(titles: Sequence[str], n: int = 3) -> float:
    """The fraction of ``titles`` that contain some character n-gram at least twice (0 for no titles)."""
    if not titles:
        return 0.0
    repeated = sum(1 for t in titles if any(count > 1 for count in Counter(ngrams(t, n)).values()))
    return repeated / len(titles)


def repetition_rate(title: str, n: int = 3) -> float:
    """rep-n of one title (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training"):
    ``1 - distinct / all`` over its character n-grams, in ``[0, 1)``; 0 for a title shorter than ``n``
    characters. ``我是我是我`` has 3-grams 我是我, 是我是, 我是我: rep-3 = 1 - 2/3."""
    grams = ngrams(title, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def title_statistics(titles: Sequence[str]) -> dict[str, float]:
    """``eval/gen_len`` (mean length in characters), ``eval/distinct_1``, ``eval/distinct_2``,
    ``eval/repeat_3gram_frac`` and ``eval/distinct_titles`` (share of different titles) of ``titles``."""
    return {"eval/gen_len": sum(len(t) for t in titles) / max(len(titles), 1),
            "eval/distinct_1": distinct_n(titles, 1), "eval/distinct_2": distinct_n(titles, 2),
            "eval/repeat_3gram_frac": repeated_ngram_fraction(titles, 3),
            "eval/distinct_titles": len(set(titles)) / max(len(titles), 1)}

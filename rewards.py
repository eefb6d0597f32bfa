"""Rewards for the RL stage: batched functions ``(sources, predictions, references) -> list[float]``.

A reward sees the article as well as the title and its reference (the RL4LMs interface,
``__call__(prompt_texts, gen_texts, ref_texts)``), so a reward can judge faithfulness to the source, not
only overlap with the reference. The stage picks one by name (``--rl_reward``, :data:`REWARDS`):

- ``rouge``: a weighted mean of tw_rouge ROUGE-1/2/L F1 against the reference (``--rl_reward_weights``),
  segmented with the evaluation's segmenter (ckip grades; jieba or char are faster offline);
- ``rouge_length``: ``rouge`` minus ``--rl_length_penalty`` times the relative length error
  ``|len(pred) - len(ref)| / len(ref)`` (characters): ROUGE F1 alone rewards long, repetitive titles on a
  weak model (Paulus et al. 2018 saw the same with ROUGE-L), and this counters it directly;
- ``rouge_repetition``: ``rouge`` minus ``--rl_repetition_penalty`` times the title's rep-3, the share of
  its character 3-grams that repeat an earlier one (``1 - distinct / all``, the rep-n of Welleck et al.
  2020, "Neural Text Generation with Unlikelihood Training"). The ``rouge`` package scores each distinct
  n-gram once, so repeating one costs a title nothing there; this makes it cost.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

from text_stats import repetition_rate
from tw_rouge import METRICS, CkipSegmenter, get_segmenter, rouge_f_per_pair

RewardFn = Callable[[list[str], list[str], list[str]], Sequence[float]]
"""``(sources [n], predicted titles [n], reference titles [n]) -> [n]`` floats."""


def rouge_reward(segmenter=None, weights: Mapping[str, float] | None = None,
                 ckip_dir: str | os.PathLike | None = None) -> RewardFn:
    """ROUGE F1 of each title against its reference, in ``[0, 1]`` (``tw_rouge.rouge_f_per_pair``).

    Args:
        segmenter: ``"ckip"``, ``"jieba"``, ``"char"``, a ``tw_rouge.Segmenter``, or None for
            ``$TW_ROUGE_SEGMENTER`` (default ``ckip``). Resolved once; its per-text cache means each
            reference is segmented once over a whole run.
        weights: metric -> weight over ``rouge-1``, ``rouge-2``, ``rouge-l``; default equal (their mean).

    Returns:
        The reward; an empty title scores 0.

    Raises:
        ValueError: unknown segmenter or metric, weights that do not sum to a positive number.
        tw_rouge.CkipDataMissingError: ``ckip`` without its data (checked here, before any training).
    """
    resolved = get_segmenter(segmenter, ckip_dir)
    if isinstance(resolved, CkipSegmenter):
        resolved.check_data()
    weights = dict(weights) if weights else {m: 1.0 for m in METRICS}
    unknown = set(weights) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown ROUGE metric(s) {sorted(unknown)}; use {', '.join(METRICS)}")
    if not sum(weights.values()) > 0:
        raise ValueError("ROUGE reward weights must sum to a positive number")

    def reward(sources: list[str], preds: list[str], refs: list[str]) -> list[float]:
        return rouge_f_per_pair(preds, refs, weights=weights, segmenter=resolved)

    return reward


def rouge_length_reward(segmenter=None, weights: Mapping[str, float] | None = None, length_penalty: float = 0.5,
                        ckip_dir: str | os.PathLike | None = None) -> RewardFn:
    """:func:`rouge_reward` minus ``length_penalty * |len(pred) - len(ref)| / max(len(ref), 1)``
    (lengths in characters; the result can be negative).

    Raises:
        ValueError: as :func:`rouge_reward`, or a negative ``length_penalty``.
    """
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    return _rouge_minus(rouge_reward(segmenter, weights, ckip_dir),
                        lambda pred, ref: length_penalty * abs(len(pred) - len(ref)) / max(len(ref), 1))


def _rouge_minus(rouge: RewardFn, penalty: Callable[[str, str], float]) -> RewardFn:
    """``rouge`` minus ``penalty(pred, ref)`` for each title."""
    def reward(sources: list[str], preds: list[str], refs: list[str]) -> list[float]:
        scores = rouge(sources, preds, refs)
        return [s - penalty(p, r) for s, p, r in zip(scores, preds, refs)]

    return reward


def rouge_repetition_reward(segmenter=None, weights: Mapping[str, float] | None = None,
                            repetition_penalty: float = 1.0, n: int = 3,
                            ckip_dir: str | os.PathLike | None = None) -> RewardFn:
    """:func:`rouge_reward` minus ``repetition_penalty * text_stats.repetition_rate(pred, n)`` (the
    result can be negative).

    Raises:
        ValueError: as :func:`rouge_reward`, a negative ``repetition_penalty`` or ``n < 1``.
    """
    if repetition_penalty < 0:
        raise ValueError(f"repetition_penalty must be >= 0, got {repetition_penalty}")
    if n < 1:
        raise ValueError(f"the repetition n-gram order must be >= 1, got {n}")
    return _rouge_minus(rouge_reward(segmenter, weights, ckip_dir),
                        lambda pred, ref: repetition_penalty * repetition_rate(pred, n))


REWARDS: dict[str, Callable[..., RewardFn]] = {"rouge": rouge_reward, "rouge_length": rouge_length_reward,
                                               "rouge_repetition": rouge_repetition_reward}


def make_reward(name: str, *, segmenter=None, weights: Mapping[str, float] | None = None,
                length_penalty: float = 0.5, repetition_penalty: float = 1.0,
                ckip_dir: str | os.PathLike | None = None) -> RewardFn:
    """The reward called ``name`` in :data:`REWARDS`, built with the options it takes (``length_penalty``
    for ``rouge_length``, ``repetition_penalty`` for ``rouge_repetition``; the others ignore them).

    Raises:
        ValueError: an unknown name (the message lists the known ones), or the reward's own errors.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}")
    if name == "rouge_length":
        return rouge_length_reward(segmenter, weights, length_penalty, ckip_dir)
    if name == "rouge_repetition":
        return rouge_repetition_reward(segmenter, weights, repetition_penalty, ckip_dir=ckip_dir)
    return REWARDS[name](segmenter, weights, ckip_dir)


def check_rewards(values: Sequence[float], expected: int) -> list[float]:
    """``values`` as floats after checking there are ``expected`` of them, all finite.

    Raises:
        ValueError: the wrong count or a non-finite value (naming them).
    """
    import math

    rewards = [float(v) for v in values]
    if len(rewards) != expected:
        raise ValueError(f"reward_fn returned {len(rewards)} rewards for {expected} predictions")
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"reward_fn returned non-finite rewards: {rewards}")
    return rewards

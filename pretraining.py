"""Self-supervised pretraining data for the seq2seq model: corrupted unlabelled text -> the model restores it.

``--objective span_corruption`` or ``text_infilling`` trains on unlabelled text (the training file's
articles and titles, or ``--pretrain_files``) instead of article -> title pairs; the export then fine-tunes
with ``--model_name_or_path`` like any pretrained model (nanoT5 and KGT5 train T5 from scratch this way).

Two objectives, as pure functions on lists of token ids (no end-of-sequence token: :class:`CorruptedTexts`
appends EOS to inputs and targets as the supervised data does):

- :func:`text_infilling` (BART, Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for
  Natural Language Generation, Translation, and Comprehension", section 2.2): spans with Poisson(lambda=3)
  lengths, covering ~30% of the tokens, are each replaced by ONE mask token (a zero-length span inserts a
  mask); the target is the original text. Reconstructing the whole input teaches the decoder to copy from
  the encoder through cross-attention, which a mostly extractive title generator needs.
  :func:`sentence_permutation` is BART's optional companion transform.
- :func:`span_corruption` (T5, Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", section 3.1.4; noise density 0.15, mean span length 3): each corrupted span is
  replaced by a unique sentinel (``<extra_id_0>``, ``<extra_id_1>``, ... in order) and the target lists
  ``sentinel, span tokens`` for each span. Targets are short (~25% of the input), so a step is cheaper,
  but the decoder never copies long stretches.

Every function is deterministic given its ``rng`` (``numpy.random.default_rng(...)``) and never modifies
its input. :class:`CorruptedTexts` draws each example's corruption from ``(seed, epoch, index)``, so a
resumed run sees exactly the corruptions an uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "CorruptedTexts",
    "OBJECTIVES",
    "random_spans_noise_mask",
    "span_corruption",
    "poisson_span_mask",
    "text_infilling",
    "sentence_permutation",
]


# ----------------------------------------------------------------------------------------------------
# T5 span corruption


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> list[bool]:
    """T5's ``random_spans_noise_mask``: which of ``length`` tokens to corrupt.

    The number of noise tokens is ``round(length * noise_density)`` (at least 1, at most ``length - 1``)
    split into ``round(num_noise / mean_span_length)`` spans (at least 1); noise and non-noise token
    counts are each partitioned at random into that many non-empty spans, and the spans are interleaved
    starting with a non-noise span, so the sequence never starts with noise.

    Args:
        length: number of tokens (>= 0).
        noise_density: fraction of tokens to corrupt, in (0, 1).
        mean_span_length: mean length of a noise span in tokens (> 0).

    Returns:
        ``[length]`` booleans, True for a noise token. Sequences shorter than 2 tokens get no noise.
    """
    if length < 2:
        return [False] * length
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    num_nonnoise = length - num_noise

    def partition(total: int, parts: int) -> list[int]:
        # a uniformly random composition of `total` into `parts` positive integers
        cuts = sorted(rng.choice(np.arange(1, total), size=parts - 1, replace=False).tolist()) if parts > 1 else []
        bounds = [0] + cuts + [total]
        return [b - a for a, b in zip(bounds[:-1], bounds[1:])]

    noise_lengths = partition(num_noise, num_spans)
    nonnoise_lengths = partition(num_nonnoise, num_spans)
    mask: list[bool] = []
    for keep, drop in zip(nonnoise_lengths, noise_lengths):
        mask.extend([False] * keep)
        mask.extend([True] * drop)
    return mask


def span_corruption(ids: Sequence[int], noise_density: float, mean_span_length: float,
                    sentinel_ids: Sequence[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """T5 span corruption of one token sequence.

    Example (noise spans "c d" and "g"): ``a b c d e f g`` -> inputs ``a b <s0> e f <s1>``,
    targets ``<s0> c d <s1> g``.

    Args:
        ids: ``[length]`` token ids of one text (without EOS).
        noise_density: fraction of tokens corrupted (T5: 0.15).
        mean_span_length: mean noise span length in tokens (T5: 3).
        sentinel_ids: ids of ``<extra_id_0>, <extra_id_1>, ...``; span ``i`` uses ``sentinel_ids[i]``.
            There must be at least as many as spans (``length * noise_density / mean_span_length``);
            sequences are truncated to the spans the sentinels allow when there are too few.
        rng: source of randomness.

    Returns:
        ``(inputs, targets)``: ``inputs`` has ``length - num_noise + num_spans`` ids, ``targets``
        ``num_noise + num_spans`` ids. An empty or one-token ``ids`` gives ``(ids, [])``.
    """
    ids = list(ids)
    mask = random_spans_noise_mask(len(ids), noise_density, mean_span_length, rng)
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (tok, noisy) in enumerate(zip(ids, mask)):
        if noisy:
            if i == 0 or not mask[i - 1]:
                span += 1
                if span >= len(sentinel_ids):  # out of sentinels: stop here
                    break
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(tok)
        else:
            inputs.append(tok)
    return inputs, targets


# ----------------------------------------------------------------------------------------------------
# BART text infilling


def poisson_span_mask(length: int, mask_ratio: float, poisson_lambda: float,
                      rng: np.random.Generator) -> tuple[list[bool], list[int]]:
    """Choose BART infilling spans: lengths ~ Poisson(``poisson_lambda``) covering ``mask_ratio``.

    Span lengths are drawn until they cover ``round(length * mask_ratio)`` tokens (the last one is cut
    to fit); each span starts at a distinct random position. Overlapping or adjacent spans merge.
    A zero-length span becomes an insertion point.

    Args:
        length: number of tokens.
        mask_ratio: fraction of tokens to mask (BART: 0.3).
        poisson_lambda: mean span length (BART: 3).

    Returns:
        ``(masked, insertions)``: ``[length]`` booleans (True = inside a masked span) and the sorted
        positions ``p`` (0..length) before which one mask token is inserted.
    """
    masked = [False] * length
    insertions: list[int] = []
    num_to_mask = int(round(length * mask_ratio))
    if length == 0 or num_to_mask == 0:
        return masked, insertions
    span_lengths: list[int] = []
    covered = 0
    while covered < num_to_mask:
        n = int(rng.poisson(poisson_lambda))
        n = min(n, num_to_mask - covered)
        span_lengths.append(n)
        covered += n
    starts = rng.choice(length, size=min(len(span_lengths), length), replace=False).tolist()
    for start, n in zip(starts, span_lengths):
        if n == 0:
            insertions.append(start)
        for j in range(start, min(start + n, length)):
            masked[j] = True
    insertions = sorted(p for p in set(insertions) if not masked[p])
    return masked, insertions


def text_infilling(ids: Sequence[int], mask_id: int, rng: np.random.Generator, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0) -> tuple[list[int], list[int]]:
    """BART text infilling of one token sequence.

    Spans chosen by :func:`poisson_span_mask` are each replaced by a single ``mask_id`` (so the model
    must also infer how many tokens are missing); zero-length spans insert a ``mask_id``.

    Example: ``a b c d e f g`` with span "c d" and an insertion before "g" -> inputs
    ``a b <mask> e f <mask> g``, targets ``a b c d e f g``.

    Args:
        ids: ``[length]`` token ids of one text (without EOS).
        mask_id: the mask token (with a T5 vocabulary, ``<extra_id_0>`` works).
        mask_ratio: fraction of tokens masked (BART: 0.3).
        poisson_lambda: mean span length in tokens (BART: 3).
        rng: source of randomness.

    Returns:
        ``(inputs, targets)``: the corrupted sequence (at most ``length`` + insertions ids) and a copy of
        ``ids``.
    """
    ids = list(ids)
    masked, insertions = poisson_span_mask(len(ids), mask_ratio, poisson_lambda, rng)
    insert_at = set(insertions)
    inputs: list[int] = []
    for i, tok in enumerate(ids):
        if i in insert_at:
            inputs.append(mask_id)
        if masked[i]:
            if i == 0 or not masked[i - 1]:
                inputs.append(mask_id)
        else:
            inputs.append(tok)
    if len(ids) in insert_at:
        inputs.append(mask_id)
    return inputs, ids


def sentence_permutation(ids: Sequence[int], sentence_end_ids: Sequence[int] | set[int],
                         rng: np.random.Generator) -> list[int]:
    """BART sentence permutation: split after every token in ``sentence_end_ids`` (e.g. the ids of
    。！？) and shuffle the sentences. Returns a new ``[length]`` list (the same multiset of ids)."""
    ends = set(sentence_end_ids)
    sentences: list[list[int]] = [[]]
    for tok in ids:
        sentences[-1].append(tok)
        if tok in ends:
            sentences.append([])
    sentences = [s for s in sentences if s]
    if len(sentences) < 2:
        return list(ids)
    order = rng.permutation(len(sentences)).tolist()
    return [tok for k in order for tok in sentences[k]]


# ----------------------------------------------------------------------------------------------------
# the training dataset

OBJECTIVES = ("title", "span_corruption", "text_infilling")
"""``--objective``: ``title`` is supervised article -> title training; the others pretrain on plain text."""


class CorruptedTexts:
    """A map-style dataset of unlabelled texts, corrupted afresh for every epoch.

    Example ``i`` of epoch ``e`` is corrupted with ``numpy.random.default_rng([seed, e, i])``: the data depend
    only on (seed, epoch, index), so resuming mid-epoch gives exactly the uninterrupted run's batches.
    Items are ``{"input_ids", "attention_mask", "labels", "example_index"}`` (EOS appended to inputs and
    labels), the layout ``seq2seq_data.IndexedSeq2SeqCollator`` pads.

    Args:
        token_ids: ``[n]`` token-id lists of the texts, without EOS (already truncated).
        objective: ``span_corruption`` or ``text_infilling`` (see :data:`OBJECTIVES`).
        eos_token_id: appended to inputs and labels.
        sentinel_ids: ``<extra_id_0>, <extra_id_1>, ...`` ids; span corruption uses them in order, text
            infilling uses the first as its mask token.
        seed: with the epoch and index, the corruption's random state.
        noise_density, mean_noise_span_length: span corruption's parameters (T5: 0.15, 3).
        mask_ratio, poisson_lambda: text infilling's parameters (BART: 0.3, 3).

    Raises:
        ValueError: an unknown objective, no sentinel ids, parameters out of range.
    """

    def __init__(self, token_ids: Sequence[Sequence[int]], objective: str, eos_token_id: int,
                 sentinel_ids: Sequence[int], seed: int, *, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0, mask_ratio: float = 0.3, poisson_lambda: float = 3.0):
        if objective not in OBJECTIVES[1:]:
            raise ValueError(f"unknown pretraining objective {objective!r}; use {' or '.join(OBJECTIVES[1:])}")
        if not sentinel_ids:
            raise ValueError("the tokenizer has no <extra_id_N> sentinel tokens to mark corrupted spans with")
        if not 0 < noise_density < 1 or not 0 < mask_ratio < 1 or mean_noise_span_length <= 0 or poisson_lambda <= 0:
            raise ValueError("noise_density and mask_ratio must be in (0, 1), the span lengths positive")
        self.token_ids = [list(ids) for ids in token_ids]
        self.objective, self.eos_token_id, self.sentinel_ids = objective, eos_token_id, list(sentinel_ids)
        self.seed, self.epoch = seed, 0
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        # what the length-grouped sampler sorts by: the uncorrupted length (close to the input's)
        self.features = [{"input_ids": ids} for ids in self.token_ids]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.token_ids)

    def corrupt(self, index: int, epoch: int | None = None) -> tuple[list[int], list[int]]:
        """``(inputs, targets)`` of example ``index`` in ``epoch`` (default the current one), without EOS."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])
        ids = self.token_ids[index]
        if self.objective == "span_corruption":
            return span_corruption(ids, self.noise_density, self.mean_noise_span_length, self.sentinel_ids, rng)
        return text_infilling(ids, self.sentinel_ids[0], rng, self.mask_ratio, self.poisson_lambda)

    def __getitem__(self, index: int) -> dict:
        inputs, targets = self.corrupt(index)
        inputs, targets = inputs + [self.eos_token_id], targets + [self.eos_token_id]
        return {"input_ids": inputs, "attention_mask": [1] * len(inputs), "labels": targets, "example_index": index}

"""Self-critical sequence training (SCST) with a ROUGE reward: the maths and one rollout step.

Policy gradient for a seq2seq title generator (REINFORCE, Williams 1992), with the self-critical
baseline of Rennie et al. 2017 ("Self-critical Sequence Training for Image Captioning",
arXiv:1612.00563): the reward of the model's own greedy title is subtracted from the reward of each
sampled title, so a sample is reinforced only when it beats what the model would output at test time.
With several samples per article the baseline can instead be the mean reward of the *other* samples
(leave-one-out, Kool et al. 2019 "Buy 4 REINFORCE samples, get a baseline for free!"; RLOO in
Ahmadian et al. 2024), which needs no greedy decode and keeps the gradient unbiased. The RL loss is
mixed with the usual cross-entropy as in Paulus et al. 2018 ("A Deep Reinforced Model for Abstractive
Summarization", arXiv:1705.04304): ``L = gamma * L_rl + (1 - gamma) * L_ml``.

The maths (:func:`sequence_log_probs`, :func:`completion_mask`, :func:`self_critical_advantages`,
:func:`self_critical_loss`, :func:`mixed_objective`, ...) are pure tensor functions; the model-facing
pieces are :func:`collect_rollouts`, :func:`policy_log_probs` and :func:`scst_step`. Shapes
use ``B`` articles, ``K`` samples per article, ``N = B * K`` sampled sequences, ``T`` generated
tokens and ``V`` vocabulary entries.

A note on token layout: ``model.generate`` for T5/mT5 returns ``[N, 1 + T]`` sequences whose first
column is ``decoder_start_token_id`` (which is the pad id, 0, for mT5) and which are padded with
``pad_token_id`` after each row's EOS. The first column is not a generated action: it is stripped
(:func:`strip_decoder_start`) before the tokens are used as labels or masked, otherwise a mask that
drops padding would drop the start token and shift every position by one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

from generation import clean_title
from tw_rouge import METRICS, CkipSegmenter, get_segmenter, rouge_f_per_pair

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
"""A batched reward: ``(predicted titles [n], reference titles [n]) -> [n]`` floats (RL4LMs style)."""

LABEL_PAD_ID = -100  # ignored by transformers' cross-entropy; marks positions outside a completion
_ZERO_ADVANTAGE_TOL = 1e-9


# --------------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------------


def sequence_log_probs(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of whole sequences: ``sum_t mask[b, t] * log softmax(logits[b, t] / temperature)[tokens[b, t]]``.

    ``logits[b, t]`` must be the distribution that produced ``tokens[b, t]`` (for a seq2seq model
    that is the decoder output at position ``t`` when the decoder input is the tokens shifted right,
    as transformers does for ``labels``). The softmax is computed in float32 even for bf16/fp16
    logits. Masked positions contribute exactly 0 to the result whatever their token ids (``-100`` is
    fine) or logits (even ``inf``/NaN), and get a zero gradient when their logits are finite.

    Args:
        logits: ``[B, T, V]`` unnormalised scores.
        tokens: ``[B, T]`` integer token ids.
        mask: ``[B, T]`` bool (or 0/1) - which positions belong to the sequence.
        temperature: the sampling temperature, so that the result is the log-probability under the
            distribution the tokens were sampled from (1.0 = the model's own).

    Returns:
        ``[B]`` float32 log-probabilities (``<= 0``), differentiable w.r.t. ``logits``.

    Raises:
        ValueError: mismatched shapes, or a non-positive temperature.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2] or mask.shape != tokens.shape:
        raise ValueError(
            f"expected logits [B, T, V], tokens [B, T], mask [B, T]; got {tuple(logits.shape)}, "
            f"{tuple(tokens.shape)}, {tuple(mask.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    mask = mask.bool()
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    safe_tokens = torch.where(mask, tokens, torch.zeros_like(tokens)).long()  # -100 would break gather
    token_log_probs = torch.gather(F.log_softmax(logits, dim=-1), -1, safe_tokens.unsqueeze(-1)).squeeze(-1)
    # where (not multiply) so that -inf/NaN at masked positions cannot leak into the sum or its gradient
    return torch.where(mask, token_log_probs, torch.zeros_like(token_log_probs)).sum(dim=-1)


def strip_decoder_start(sequences: torch.Tensor, decoder_start_token_id: int) -> torch.Tensor:
    """Drop the first column of encoder-decoder ``generate`` output, checking it is the start token.

    Args:
        sequences: ``[N, 1 + T]`` from ``model.generate`` (T5: first column = ``decoder_start_token_id``).

    Returns:
        ``[N, T]`` the generated tokens (a view).

    Raises:
        ValueError: the first column is not ``decoder_start_token_id`` (e.g. a decoder-only model, or
            sequences that were already stripped).
    """
    if sequences.dim() != 2 or sequences.shape[1] < 2:
        raise ValueError(f"expected generate() output [N, 1 + T] with T >= 1, got {tuple(sequences.shape)}")
    if not bool((sequences[:, 0] == decoder_start_token_id).all()):
        raise ValueError(
            f"the first column of the generated sequences is not decoder_start_token_id={decoder_start_token_id}: "
            "expected encoder-decoder generate() output that still holds the start token"
        )
    return sequences[:, 1:]


def completion_mask(tokens: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Which generated positions are actions of the policy: everything up to and including the first EOS.

    ``tokens`` must NOT contain the decoder start column (see :func:`strip_decoder_start`); for mT5
    that column is the pad id and would otherwise count as a token.

    - A row with an EOS: 1 up to and including its first EOS (an EOS at position 0, i.e. an empty
      title, gives a single 1: stopping at once is an action with a probability too), 0 after it.
    - A row without EOS (the sample hit ``max_new_tokens``): 1 everywhere except a trailing run of
      pad (or negative, e.g. ``-100``) ids. ``generate`` writes pad only after a row's EOS, so such a
      trailing run comes from external padding (a tokenizer-padded batch); the rare case of a policy
      sampling pad as its very last tokens is dropped too, a negligible bias.

    Args:
        tokens: ``[B, T]`` token ids.
        eos_token_id: the EOS id (1 for mT5).
        pad_token_id: the pad id (0 for mT5).

    Returns:
        ``[B, T]`` bool mask.
    """
    if tokens.dim() != 2:
        raise ValueError(f"expected tokens [B, T], got {tuple(tokens.shape)}")
    batch_size, length = tokens.shape
    positions = torch.arange(length, device=tokens.device).unsqueeze(0)  # [1, T]
    is_eos = tokens == eos_token_id
    has_eos = is_eos.any(dim=1, keepdim=True)  # [B, 1]
    first_eos = is_eos.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximal index
    up_to_eos = positions <= first_eos
    is_content = (tokens != pad_token_id) & (tokens >= 0)
    # index of the last content token; -1 for a row that is all padding
    last_content = torch.where(
        is_content.any(dim=1, keepdim=True),
        length - 1 - is_content.flip(dims=[1]).int().argmax(dim=1, keepdim=True),
        torch.full((batch_size, 1), -1, device=tokens.device, dtype=torch.long),
    )
    up_to_last_content = positions <= last_content
    return torch.where(has_eos, up_to_eos, up_to_last_content)


def completion_labels(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tokens`` with ``-100`` outside ``mask``: the ``labels`` form transformers' seq2seq models take.

    Args:
        tokens: ``[B, T]`` generated ids (decoder start column stripped); mask: ``[B, T]`` bool.

    Returns:
        ``[B, T]`` long tensor.
    """
    return tokens.long().masked_fill(~mask.bool(), LABEL_PAD_ID)


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``[start] + labels[:, :-1]`` with ``-100`` replaced by pad.

    The same as T5's ``_shift_right``, which ``model(labels=...)`` applies internally; passing these
    as ``decoder_input_ids`` gives identical logits without the cross-entropy the model would also
    compute over ``[N, T, V]`` (about 2 GB in float32 for mt5-small with 32 x 64 samples).

    Args:
        labels: ``[B, T]`` ids, ``-100`` where ignored.

    Returns:
        ``[B, T]`` long tensor.
    """
    start = torch.full_like(labels[:, :1], decoder_start_token_id)
    shifted = torch.cat([start, labels[:, :-1]], dim=1).long()
    return shifted.masked_fill(shifted == LABEL_PAD_ID, pad_token_id)


BaselineName = Literal["greedy", "loo"]


def self_critical_advantages(
    sample_rewards: torch.Tensor,
    greedy_rewards: torch.Tensor | None = None,
    baseline: BaselineName | None = None,
) -> torch.Tensor:
    """Advantages of sampled titles: reward minus a baseline that does not depend on the sample.

    - ``"greedy"`` (Rennie et al. 2017): ``A[b, k] = r[b, k] - r_greedy[b]``.
    - ``"loo"`` (leave-one-out, Kool et al. 2019): ``A[b, k] = r[b, k] - mean_{j != k} r[b, j]``,
      which equals ``K / (K - 1) * (r[b, k] - mean_j r[b, j])``. Needs ``K >= 2``.

    Args:
        sample_rewards: ``[B, K]`` rewards of K samples per article.
        greedy_rewards: ``[B]`` reward of each article's greedy title (required for ``"greedy"``).
        baseline: ``"greedy"``, ``"loo"``, or None for ``"greedy"`` when ``K == 1`` and ``"loo"`` when
            ``K > 1``.

    Returns:
        ``[B, K]`` float advantages, detached (no gradient flows through a reward).

    Raises:
        ValueError: bad shapes, unknown baseline, ``"loo"`` with one sample, ``"greedy"`` without
            greedy rewards.
    """
    if sample_rewards.dim() != 2 or sample_rewards.shape[1] < 1:
        raise ValueError(f"expected sample_rewards [B, K], got {tuple(sample_rewards.shape)}")
    rewards = sample_rewards.detach().float()
    num_samples = rewards.shape[1]
    if baseline is None:
        baseline = "greedy" if num_samples == 1 else "loo"
    if baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("the 'greedy' baseline needs greedy_rewards [B]")
        if greedy_rewards.shape != rewards.shape[:1]:
            raise ValueError(f"expected greedy_rewards [{rewards.shape[0]}], got {tuple(greedy_rewards.shape)}")
        return rewards - greedy_rewards.detach().float().to(rewards.device).unsqueeze(1)
    if baseline == "loo":
        if num_samples < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per article")
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (num_samples - 1)
        return rewards - others_mean
    raise ValueError(f"unknown baseline {baseline!r}; use 'greedy' or 'loo'")


def self_critical_loss(
    seq_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    lengths: torch.Tensor | None = None,
    normalize: Literal["sequence", "token"] = "sequence",
) -> torch.Tensor:
    """The REINFORCE surrogate loss whose gradient is the policy gradient: minimising it raises the
    log-probability of samples with a positive advantage and lowers it for a negative one.

    - ``"sequence"``: ``-mean_i(A_i * log p_i)`` (Rennie et al. 2017), every sample weighs the same.
    - ``"token"``: ``-sum_i(A_i * log p_i) / sum_i(len_i)``, every sampled token weighs the same
      (the token-level normalisation of DAPO, Yu et al. 2025); the scale is that of ``"sequence"``
      divided by the mean length.

    Args:
        seq_log_probs: ``[N]`` sequence log-probabilities (from :func:`sequence_log_probs`, with grad).
        advantages: ``[N]`` advantages; detached here.
        lengths: ``[N]`` tokens per sequence (``mask.sum(-1)``), required for ``"token"``.
        normalize: ``"sequence"`` or ``"token"``.

    Returns:
        Scalar loss.

    Raises:
        ValueError: shapes differ or are not 1-D, ``N == 0``, unknown ``normalize``, or ``"token"``
            without lengths.
    """
    if seq_log_probs.dim() != 1 or advantages.shape != seq_log_probs.shape:
        raise ValueError(
            f"expected seq_log_probs [N] and advantages [N], got {tuple(seq_log_probs.shape)} and "
            f"{tuple(advantages.shape)}"
        )
    if seq_log_probs.numel() == 0:
        raise ValueError("no sequences to compute a loss on")
    weighted = advantages.detach().to(seq_log_probs.dtype) * seq_log_probs
    if normalize == "sequence":
        return -weighted.mean()
    if normalize == "token":
        if lengths is None:
            raise ValueError("normalize='token' needs lengths [N]")
        if lengths.shape != seq_log_probs.shape:
            raise ValueError(f"expected lengths [{seq_log_probs.numel()}], got {tuple(lengths.shape)}")
        return -weighted.sum() / lengths.sum().clamp(min=1).to(weighted.dtype)
    raise ValueError(f"unknown normalize {normalize!r}; use 'sequence' or 'token'")


def mixed_objective(rl_loss: torch.Tensor | None, ml_loss: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Paulus et al. 2018 mixed objective ``gamma * rl_loss + (1 - gamma) * ml_loss``.

    A loss whose weight is 0 may be None (so ``gamma == 1`` needs no teacher-forced forward pass).
    Paulus et al. used ``gamma = 0.9984`` (their RL loss is on a larger scale than the per-token
    cross-entropy).

    Raises:
        ValueError: ``gamma`` outside ``[0, 1]``, or a needed loss is None.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if gamma == 1.0:
        if rl_loss is None:
            raise ValueError("gamma=1 needs rl_loss")
        return rl_loss
    if gamma == 0.0:
        if ml_loss is None:
            raise ValueError("gamma=0 needs ml_loss")
        return ml_loss
    if rl_loss is None or ml_loss is None:
        raise ValueError(f"gamma={gamma} needs both rl_loss and ml_loss")
    return gamma * rl_loss + (1.0 - gamma) * ml_loss


# --------------------------------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------------------------------


def make_rouge_reward(
    segmenter=None, weights: Mapping[str, float] | None = None, ckip_dir=None
) -> RewardFn:
    """A batched ROUGE reward ``(preds, refs) -> [n]`` floats in ``[0, 1]`` using ``tw_rouge.rouge_f_per_pair``.

    Args:
        segmenter: ``"ckip"``, ``"jieba"``, ``"char"``, a ``tw_rouge.Segmenter``, or None for
            ``$TW_ROUGE_SEGMENTER`` (default ``ckip``). Resolved once here; its per-text cache means the
            references are segmented once over a whole run.
        weights: metric -> weight over ``rouge-1``, ``rouge-2``, ``rouge-l`` F1; default equal weights
            (the mean of the three F1 values).
        ckip_dir: ckiptagger data dir for the ``ckip`` segmenter.

    Returns:
        The reward function. An empty prediction scores 0.

    Raises:
        ValueError: unknown segmenter or metric, non-positive weight sum.
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

    def rouge_reward(preds: list[str], refs: list[str]) -> list[float]:
        return rouge_f_per_pair(preds, refs, weights=weights, segmenter=resolved)

    return rouge_reward


# --------------------------------------------------------------------------------------------------
# Rollouts and the SCST step
# --------------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """Sampled (and greedy) titles for one batch, with their rewards. ``N = B * K``; rows of one
    article are consecutive (``generate``'s ``num_return_sequences`` order)."""

    sample_tokens: torch.Tensor  # [N, T] generated ids, decoder start stripped, pad after EOS
    sample_mask: torch.Tensor  # [N, T] bool, see completion_mask
    sample_labels: torch.Tensor  # [N, T] sample_tokens with -100 outside the mask
    sample_has_eos: torch.Tensor  # [N] bool, False for samples cut at max_new_tokens
    sample_texts: list[str]  # [N] decoded, cleaned
    sample_rewards: torch.Tensor  # [B, K] float32
    greedy_texts: list[str] | None  # [B], None when no baseline_config was given
    greedy_rewards: torch.Tensor | None  # [B] float32
    references: list[str]  # [B]


def _special_token_ids(model, generation_config) -> tuple[int, int, int]:
    """(decoder start, EOS, pad) ids: the generation config's, else the model config's."""

    def pick(name: str) -> int:
        value = getattr(generation_config, name, None)
        if value is None:
            value = getattr(model.config, name, None)
        if isinstance(value, (list, tuple)):  # generation configs may list several EOS ids; T5 has one
            value = value[0]
        if value is None:
            raise ValueError(f"neither the generation config nor the model config sets {name}")
        return int(value)

    return pick("decoder_start_token_id"), pick("eos_token_id"), pick("pad_token_id")


def _decode(tokenizer, tokens: torch.Tensor) -> list[str]:
    return [clean_title(t) for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def _check_rewards(values: Sequence[float], expected: int) -> torch.Tensor:
    rewards = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if rewards.numel() != expected:
        raise ValueError(f"reward_fn returned {rewards.numel()} rewards for {expected} predictions")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"reward_fn returned non-finite rewards: {rewards.tolist()}")
    return rewards


@torch.no_grad()
def collect_rollouts(
    generate_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    reward_fn: RewardFn,
    references: Sequence[str],
    *,
    num_samples: int,
    rollout_config,
    baseline_config=None,
) -> Rollouts:
    """Sample ``num_samples`` titles per article (and a greedy one), decode and score them.

    Generation runs in eval mode (no dropout) under ``torch.no_grad``; the model's previous mode is
    restored on return.

    Args:
        generate_model: a model with ``generate`` (the unwrapped one under DDP).
        input_ids, attention_mask: ``[B, S]`` tokenised sources.
        references: ``[B]`` reference titles.
        num_samples: K samples per article (``num_return_sequences``).
        rollout_config: a sampling ``GenerationConfig`` (``do_sample=True``, ``num_beams=1``; e.g. the
            ``rl_sample`` preset with ``max_new_tokens``); its ``num_return_sequences`` is overridden.
        baseline_config: a ``GenerationConfig`` for the baseline title (greedy for SCST), or None to
            skip it.

    Raises:
        ValueError: a non-sampling rollout config, ``num_samples < 1``, mismatched batch sizes, a
            reward function returning the wrong number of values or non-finite ones.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not rollout_config.do_sample or (rollout_config.num_beams or 1) != 1:
        raise ValueError(
            "rollout_config must sample (do_sample=True, num_beams=1): policy-gradient needs titles drawn "
            "from the model's distribution; use e.g. the 'rl_sample' preset"
        )
    batch_size = input_ids.shape[0]
    references = list(references)
    if len(references) != batch_size:
        raise ValueError(f"got {len(references)} references for a batch of {batch_size} sources")
    start_id, eos_id, pad_id = _special_token_ids(generate_model, rollout_config)

    sampling = copy.deepcopy(rollout_config)
    sampling.num_return_sequences = num_samples
    was_training = generate_model.training
    generate_model.eval()
    try:
        sequences = generate_model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=sampling
        )
        greedy = None
        if baseline_config is not None:
            greedy = generate_model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=baseline_config
            )
    finally:
        generate_model.train(was_training)

    if sequences.shape[0] != batch_size * num_samples:
        raise ValueError(f"generate returned {sequences.shape[0]} samples, expected {batch_size} x {num_samples}")
    if greedy is not None and greedy.shape[0] != batch_size:
        raise ValueError(
            f"baseline generation returned {greedy.shape[0]} titles for {batch_size} sources: "
            "baseline_config must return one sequence per source (num_return_sequences=1)"
        )
    tokens = strip_decoder_start(sequences, start_id)
    mask = completion_mask(tokens, eos_id, pad_id)
    sample_texts = _decode(tokenizer, tokens.masked_fill(~mask, pad_id))
    greedy_texts = None
    if greedy is not None:
        greedy_tokens = strip_decoder_start(greedy, start_id)
        greedy_tokens = greedy_tokens.masked_fill(~completion_mask(greedy_tokens, eos_id, pad_id), pad_id)
        greedy_texts = _decode(tokenizer, greedy_tokens)

    # one reward call for samples and greedy titles (a batched segmenter is faster on one big batch)
    preds = sample_texts + (greedy_texts or [])
    refs = [r for r in references for _ in range(num_samples)] + (references if greedy_texts is not None else [])
    rewards = _check_rewards(reward_fn(preds, refs), len(preds))
    num_sampled = batch_size * num_samples
    return Rollouts(
        sample_tokens=tokens,
        sample_mask=mask,
        sample_labels=completion_labels(tokens, mask),
        sample_has_eos=(tokens == eos_id).any(dim=1),
        sample_texts=sample_texts,
        sample_rewards=rewards[:num_sampled].view(batch_size, num_samples),
        greedy_texts=greedy_texts,
        greedy_rewards=rewards[num_sampled:] if greedy_texts is not None else None,
        references=references,
    )


def policy_log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sample_tokens: torch.Tensor,
    sample_mask: torch.Tensor,
    *,
    decoder_start_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probabilities of sampled titles under ``model``, recomputed with grad by one teacher-forced pass.

    The decoder input is the labels (samples with ``-100`` outside the mask) shifted right, exactly what
    ``model(labels=...)`` would build, so ``logits[:, t]`` is the distribution ``generate`` drew
    ``sample_tokens[:, t]`` from (up to dropout when ``model`` is in train mode).

    Args:
        model: seq2seq model (may be DDP-wrapped); called in its current mode.
        input_ids, attention_mask: ``[B, S]`` sources; each row is repeated ``N / B`` times
            (``repeat_interleave``, the order of ``generate(num_return_sequences=K)``).
        sample_tokens, sample_mask: ``[N, T]`` from :class:`Rollouts`.
        temperature: the rollout temperature.

    Returns:
        ``[N]`` float32 sequence log-probabilities with grad.

    Raises:
        ValueError: ``N`` is not a multiple of ``B``.
    """
    batch_size, num_sequences = input_ids.shape[0], sample_tokens.shape[0]
    if batch_size == 0 or num_sequences % batch_size:
        raise ValueError(f"{num_sequences} samples is not a multiple of the batch size {batch_size}")
    repeats = num_sequences // batch_size
    decoder_input_ids = shift_right(
        completion_labels(sample_tokens, sample_mask), decoder_start_token_id, pad_token_id
    )
    logits = model(
        input_ids=input_ids.repeat_interleave(repeats, dim=0),
        attention_mask=attention_mask.repeat_interleave(repeats, dim=0),
        decoder_input_ids=decoder_input_ids.to(input_ids.device),
        use_cache=False,
    ).logits
    return sequence_log_probs(logits, sample_tokens.to(logits.device), sample_mask.to(logits.device),
                              temperature=temperature)


def scst_step(
    model,
    batch: Mapping[str, torch.Tensor],
    tokenizer,
    reward_fn: RewardFn,
    *,
    num_samples: int,
    rollout_config,
    baseline_config=None,
    references: Sequence[str] | None = None,
    generate_model=None,
    baseline: BaselineName | None = None,
    normalize: Literal["sequence", "token"] = "sequence",
) -> tuple[torch.Tensor, dict[str, float]]:
    """One self-critical step: roll out, score, and return the RL loss (with grad) and statistics.

    (a) the baseline title per article with ``baseline_config`` (greedy) and (b) ``num_samples``
    sampled titles per article with ``rollout_config``, both from ``generate_model`` in eval mode
    without grad; (c) the samples' log-probabilities recomputed with a teacher-forced forward pass of
    ``model`` (with grad, in ``model``'s own mode - train mode, so with dropout, when called from a
    training loop) over the completion mask; (d) rewards from ``reward_fn`` on decoded, cleaned titles;
    (e) advantages and :func:`self_critical_loss`. The caller backpropagates and steps the optimiser
    (optionally through :func:`mixed_objective`).

    The log-probabilities are those of the untruncated softmax at ``rollout_config.temperature``;
    ``top_k``/``top_p`` truncation is not reflected (keep them neutral, as the ``rl_sample`` preset does,
    for an exact policy gradient).

    Args:
        model: the policy, possibly wrapped (DDP via ``accelerator.prepare``); called for the forward.
        batch: ``DataCollatorForSeq2Seq`` output: ``input_ids`` and ``attention_mask`` ``[B, S]``; ``labels``
            ``[B, L]`` (``-100`` padding) is used only when ``references`` is None.
        tokenizer: decodes the titles.
        reward_fn: ``(preds [n], refs [n]) -> [n]`` floats, e.g. :func:`make_rouge_reward`.
        num_samples: K samples per article.
        rollout_config: sampling ``GenerationConfig`` (see :func:`collect_rollouts`).
        baseline_config: greedy ``GenerationConfig``; required for ``baseline="greedy"``, optional for
            ``"loo"`` (then it only feeds the ``rl/greedy_reward`` statistic; None skips that decode).
        references: ``[B]`` reference titles. When None they are decoded from ``batch["labels"]``,
            which is lossy (NFKC-normalised, unknown characters dropped).
        generate_model: the unwrapped model (``accelerator.unwrap_model(model)``); default ``model``.
        baseline: see :func:`self_critical_advantages` (default greedy for K=1, leave-one-out for K>1).
        normalize: see :func:`self_critical_loss`.

    Returns:
        ``(loss, stats)``: the scalar loss with grad, and floats ``rl/loss``, ``rl/sample_reward``,
        ``rl/greedy_reward`` (NaN without ``baseline_config``), ``rl/advantage``,
        ``rl/advantage_abs``, ``rl/zero_advantage_frac`` (samples with ``|A| <= 1e-9``: no learning
        signal), ``rl/sample_length`` (tokens including EOS), ``rl/empty_sample_frac`` (samples that
        decode to an empty title), ``rl/truncated_frac`` (samples without EOS), ``rl/sample_log_prob``.

    Raises:
        ValueError: as :func:`collect_rollouts`, a ``"greedy"`` baseline without ``baseline_config``, a
            batch without ``input_ids``/``attention_mask``.
        TypeError: ``generate_model`` has no ``generate`` (pass the unwrapped model).
    """
    generate_model = generate_model if generate_model is not None else model
    if not hasattr(generate_model, "generate"):
        raise TypeError(
            f"{type(generate_model).__name__} has no generate(); pass generate_model=accelerator.unwrap_model(model)"
        )
    for key in ("input_ids", "attention_mask"):
        if key not in batch:
            raise ValueError(f"batch has no {key!r} (expected DataCollatorForSeq2Seq output)")
    num_samples = int(num_samples)
    if baseline is None:
        baseline = "greedy" if num_samples == 1 else "loo"
    if baseline == "greedy" and baseline_config is None:
        raise ValueError("baseline='greedy' needs baseline_config (a greedy GenerationConfig)")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if references is None:
        if "labels" not in batch:
            raise ValueError("give references or a batch with 'labels'")
        labels = batch["labels"].masked_fill(batch["labels"] == LABEL_PAD_ID, tokenizer.pad_token_id)
        references = _decode(tokenizer, labels)

    rollouts = collect_rollouts(
        generate_model, input_ids, attention_mask, tokenizer, reward_fn, references,
        num_samples=num_samples, rollout_config=rollout_config, baseline_config=baseline_config,
    )
    advantages = self_critical_advantages(rollouts.sample_rewards, rollouts.greedy_rewards, baseline)

    start_id, _, pad_id = _special_token_ids(generate_model, rollout_config)
    temperature = rollout_config.temperature if rollout_config.temperature is not None else 1.0
    log_probs = policy_log_probs(
        model, input_ids, attention_mask, rollouts.sample_tokens, rollouts.sample_mask,
        decoder_start_token_id=start_id, pad_token_id=pad_id, temperature=temperature,
    )
    lengths = rollouts.sample_mask.sum(dim=1)
    flat_advantages = advantages.reshape(-1).to(log_probs.device)
    loss = self_critical_loss(log_probs, flat_advantages, lengths.to(log_probs.device), normalize)

    stats = {
        "rl/loss": loss.item(),
        "rl/sample_reward": rollouts.sample_rewards.mean().item(),
        "rl/greedy_reward": rollouts.greedy_rewards.mean().item() if rollouts.greedy_rewards is not None else math.nan,
        "rl/advantage": flat_advantages.mean().item(),
        "rl/advantage_abs": flat_advantages.abs().mean().item(),
        "rl/zero_advantage_frac": (flat_advantages.abs() <= _ZERO_ADVANTAGE_TOL).float().mean().item(),
        "rl/sample_length": lengths.float().mean().item(),
        "rl/empty_sample_frac": sum(not t for t in rollouts.sample_texts) / len(rollouts.sample_texts),
        "rl/truncated_frac": (~rollouts.sample_has_eos).float().mean().item(),
        "rl/sample_log_prob": log_probs.detach().mean().item(),
    }
    return loss, stats


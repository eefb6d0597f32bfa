"""The RL stage's model-facing part: rollouts and one self-critical step (the maths is in ``rl_math.py``,
the rewards in ``rewards.py``).

One step (:func:`scst_step`), after Rennie et al. 2017 ("Self-critical Sequence Training"):

1. roll out: ``K`` sampled titles per article (and the greedy title, the self-critical baseline) from the
   unwrapped model in eval mode without grad (:func:`collect_rollouts`);
2. reward: one batched call ``reward_fn(sources, titles, references)`` for samples and greedy titles;
3. log-probabilities of the samples recomputed with grad by one teacher-forced pass of the (possibly
   DDP-wrapped) policy, masked after each sample's EOS (:func:`policy_logits`); with a KL anchor, the
   frozen reference model's logits on the same inputs (no grad);
4. advantages (greedy or leave-one-out baseline) and the REINFORCE surrogate loss.

The caller mixes the loss with the cross-entropy and the KL term (``rl_math.mixed_objective``),
backpropagates and steps the optimiser. Each step reports its statistics and the seconds spent in
rollout, reward and log-probability passes (``rl/time_*_s``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch

from generation import clean_title, generate_with
from rewards import RewardFn, check_rewards
from rl_math import (
    LABEL_PAD_ID,
    BaselineName,
    completion_labels,
    completion_mask,
    kl_to_reference,
    masked_mean,
    self_critical_advantages,
    self_critical_loss,
    sequence_log_probs,
    shift_right,
    strip_decoder_start,
)

_ZERO_ADVANTAGE_TOL = 1e-9


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
    sources: list[str]  # [B]
    references: list[str]  # [B]
    rollout_s: float = 0.0  # seconds generating
    reward_s: float = 0.0  # seconds in reward_fn


@dataclass
class SCSTStep:
    """What :func:`scst_step` returns: the policy-gradient loss, the KL term and the statistics."""

    loss: torch.Tensor  # scalar with grad: the REINFORCE surrogate (rl_math.self_critical_loss)
    kl: torch.Tensor | None  # scalar with grad: mean per-token KL to the reference model (None without one)
    stats: dict[str, float]


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


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the step's timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def collect_rollouts(
    generate_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    reward_fn: RewardFn,
    references: Sequence[str],
    *,
    sources: Sequence[str],
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
        references: ``[B]`` reference titles; sources: ``[B]`` the articles (the reward sees them).
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
    references, sources = list(references), list(sources)
    if len(references) != batch_size or len(sources) != batch_size:
        raise ValueError(f"got {len(references)} references and {len(sources)} sources for a batch of "
                         f"{batch_size}")
    start_id, eos_id, pad_id = _special_token_ids(generate_model, rollout_config)

    sampling = copy.deepcopy(rollout_config)
    sampling.num_return_sequences = num_samples
    started = time.perf_counter()
    was_training = generate_model.training
    generate_model.eval()
    try:
        sequences = generate_with(generate_model, sampling, input_ids=input_ids, attention_mask=attention_mask)
        greedy = None
        if baseline_config is not None:
            greedy = generate_with(generate_model, baseline_config, input_ids=input_ids,
                                   attention_mask=attention_mask)
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
    rollout_s = time.perf_counter() - started  # decoding is part of producing the titles

    # one reward call for samples and greedy titles (a batched segmenter is faster on one big batch)
    started = time.perf_counter()
    preds = sample_texts + (greedy_texts or [])

    def aligned(items: list[str]) -> list[str]:  # one entry per title in preds: K per article, then greedy
        return [x for x in items for _ in range(num_samples)] + (items if greedy_texts is not None else [])

    rewards = torch.tensor(check_rewards(reward_fn(aligned(sources), preds, aligned(references)), len(preds)),
                           dtype=torch.float32)
    num_sampled = batch_size * num_samples
    return Rollouts(
        sample_tokens=tokens, sample_mask=mask, sample_labels=completion_labels(tokens, mask),
        sample_has_eos=(tokens == eos_id).any(dim=1), sample_texts=sample_texts,
        sample_rewards=rewards[:num_sampled].view(batch_size, num_samples), greedy_texts=greedy_texts,
        greedy_rewards=rewards[num_sampled:] if greedy_texts is not None else None, sources=sources,
        references=references, rollout_s=rollout_s, reward_s=time.perf_counter() - started,
    )


def policy_logits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sample_tokens: torch.Tensor,
    sample_mask: torch.Tensor,
    *,
    decoder_start_token_id: int,
    pad_token_id: int,
) -> torch.Tensor:
    """Logits ``[N, T, V]`` of ``model`` for the sampled titles, by one teacher-forced pass (with grad when
    the caller allows it).

    The decoder input is the labels (samples with ``-100`` outside the mask) shifted right, exactly what
    ``model(labels=...)`` would build, so ``logits[:, t]`` is the distribution ``generate`` drew
    ``sample_tokens[:, t]`` from (up to dropout when ``model`` is in train mode).

    Args:
        model: seq2seq model (may be DDP-wrapped); called in its current mode.
        input_ids, attention_mask: ``[B, S]`` sources; each row is repeated ``N / B`` times
            (``repeat_interleave``, the order of ``generate(num_return_sequences=K)``).
        sample_tokens, sample_mask: ``[N, T]`` from :class:`Rollouts`.

    Raises:
        ValueError: ``N`` is not a multiple of ``B``.
    """
    batch_size, num_sequences = input_ids.shape[0], sample_tokens.shape[0]
    if batch_size == 0 or num_sequences % batch_size:
        raise ValueError(f"{num_sequences} samples is not a multiple of the batch size {batch_size}")
    repeats = num_sequences // batch_size
    decoder_input_ids = shift_right(completion_labels(sample_tokens, sample_mask), decoder_start_token_id,
                                    pad_token_id)
    return model(
        input_ids=input_ids.repeat_interleave(repeats, dim=0),
        attention_mask=attention_mask.repeat_interleave(repeats, dim=0),
        decoder_input_ids=decoder_input_ids.to(input_ids.device),
        use_cache=False,
    ).logits


def policy_log_probs(model, input_ids, attention_mask, sample_tokens, sample_mask, *, decoder_start_token_id: int,
                     pad_token_id: int, temperature: float = 1.0) -> torch.Tensor:
    """``[N]`` float32 sequence log-probabilities of the samples under ``model`` (see :func:`policy_logits`
    and ``rl_math.sequence_log_probs``), with grad."""
    logits = policy_logits(model, input_ids, attention_mask, sample_tokens, sample_mask,
                           decoder_start_token_id=decoder_start_token_id, pad_token_id=pad_token_id)
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
    sources: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    generate_model=None,
    reference_model=None,
    baseline: BaselineName | Literal["auto"] = "auto",
    normalize: Literal["sequence", "token"] = "sequence",
) -> SCSTStep:
    """One self-critical step: roll out, score, and return the RL loss (with grad), the KL term and statistics.

    (a) the baseline title per article with ``baseline_config`` (greedy) and (b) ``num_samples`` sampled
    titles per article with ``rollout_config``, both from ``generate_model`` in eval mode without grad;
    (c) rewards from ``reward_fn(sources, titles, references)``; (d) the samples' log-probabilities
    recomputed with a teacher-forced pass of ``model`` (with grad, in ``model``'s own mode: train mode, so
    with dropout, when called from a training loop); (e) with ``reference_model``, its logits on the same
    inputs (no grad) and the per-token KL (``rl_math.kl_to_reference``); (f) advantages and
    ``rl_math.self_critical_loss``.

    The log-probabilities are those of the untruncated softmax at ``rollout_config.temperature``;
    ``top_k``/``top_p`` truncation is not reflected (keep them neutral, as the ``rl_sample`` preset does,
    for an exact policy gradient).

    Args:
        model: the policy, possibly wrapped (DDP via ``accelerator.prepare``); called for the forward.
        batch: ``DataCollatorForSeq2Seq`` output: ``input_ids`` and ``attention_mask`` ``[B, S]``; ``labels``
            ``[B, L]`` (``-100`` padding) is used only when ``references`` is None.
        tokenizer: decodes the titles.
        reward_fn: ``(sources [n], preds [n], refs [n]) -> [n]`` floats (``rewards.make_reward``).
        num_samples: K samples per article.
        rollout_config: sampling ``GenerationConfig`` (see :func:`collect_rollouts`).
        baseline_config: greedy ``GenerationConfig``; required for the ``"greedy"`` baseline, optional for
            ``"loo"`` (then it only feeds the ``rl/greedy_reward`` statistic; None skips that decode).
        sources, references: ``[B]`` the articles and reference titles. When None they are decoded from
            ``batch["input_ids"]`` / ``batch["labels"]``, which is lossy (normalised, unknown characters
            dropped).
        generate_model: the unwrapped model (``accelerator.unwrap_model(model)``); default ``model``.
        reference_model: the frozen supervised model for the KL anchor (never updated here), or None.
        baseline: ``"greedy"``, ``"loo"`` or ``"auto"`` (greedy for K=1, leave-one-out for K>1).
        normalize: ``"sequence"`` or ``"token"`` (``rl_math.self_critical_loss``).

    Returns:
        :class:`SCSTStep` with ``stats``: ``rl/loss``, ``rl/sample_reward``, ``rl/greedy_reward`` (NaN without
        ``baseline_config``), ``rl/advantage``, ``rl/advantage_abs``, ``rl/zero_advantage_frac`` (samples with
        ``|A| <= 1e-9``: no learning signal), ``rl/sample_length`` (tokens including EOS),
        ``rl/empty_sample_frac``, ``rl/truncated_frac`` (samples without EOS), ``rl/sample_log_prob``,
        ``rl/kl`` (with a reference model), ``rl/time_rollout_s``, ``rl/time_reward_s``, ``rl/time_logprob_s``.

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
    if baseline == "auto":
        baseline = "greedy" if num_samples == 1 else "loo"
    if baseline == "greedy" and baseline_config is None:
        raise ValueError("baseline='greedy' needs baseline_config (a greedy GenerationConfig)")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if references is None:
        if "labels" not in batch:
            raise ValueError("give references or a batch with 'labels'")
        labels = batch["labels"].masked_fill(batch["labels"] == LABEL_PAD_ID, tokenizer.pad_token_id)
        references = _decode(tokenizer, labels)
    if sources is None:
        sources = _decode(tokenizer, input_ids.masked_fill(attention_mask == 0, tokenizer.pad_token_id))

    rollouts = collect_rollouts(
        generate_model, input_ids, attention_mask, tokenizer, reward_fn, references, sources=sources,
        num_samples=num_samples, rollout_config=rollout_config, baseline_config=baseline_config,
    )
    advantages = self_critical_advantages(rollouts.sample_rewards, rollouts.greedy_rewards, baseline)

    started = time.perf_counter()
    start_id, _, pad_id = _special_token_ids(generate_model, rollout_config)
    temperature = rollout_config.temperature if rollout_config.temperature is not None else 1.0
    forward = dict(decoder_start_token_id=start_id, pad_token_id=pad_id)
    logits = policy_logits(model, input_ids, attention_mask, rollouts.sample_tokens, rollouts.sample_mask, **forward)
    tokens, mask = rollouts.sample_tokens.to(logits.device), rollouts.sample_mask.to(logits.device)
    log_probs = sequence_log_probs(logits, tokens, mask, temperature=temperature)
    kl = None
    if reference_model is not None:
        with torch.no_grad():
            ref_logits = policy_logits(reference_model, input_ids, attention_mask, rollouts.sample_tokens,
                                       rollouts.sample_mask, **forward)
        kl = masked_mean(kl_to_reference(logits, ref_logits, mask, temperature=temperature), mask)
    _synchronize(logits.device)
    logprob_s = time.perf_counter() - started
    lengths = mask.sum(dim=1)
    flat_advantages = advantages.reshape(-1).to(log_probs.device)
    loss = self_critical_loss(log_probs, flat_advantages, lengths, normalize)

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
        "rl/time_rollout_s": rollouts.rollout_s,
        "rl/time_reward_s": rollouts.reward_s,
        "rl/time_logprob_s": logprob_s,
    }
    if kl is not None:
        stats["rl/kl"] = kl.item()
    return SCSTStep(loss=loss, kl=kl, stats=stats)

"""The pure maths of the RL stage: tensor functions with no model, tokenizer or reward inside.

Self-critical sequence training (SCST; Rennie et al. 2017, "Self-critical Sequence Training for Image
Captioning", arXiv:1612.00563) is REINFORCE (Williams 1992) with a baseline that does not depend on the
sample: the reward of the model's own greedy title, or with several samples per article the mean reward
of the *other* samples (leave-one-out; Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
free!"). The RL loss is mixed with the cross-entropy as in Paulus et al. 2018 ("A Deep Reinforced Model
for Abstractive Summarization"): ``gamma * L_rl + (1 - gamma) * L_ml``, and optionally anchored to the
supervised model with a KL penalty (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences"; RL4LMs, Ramamurthy et al. 2023): ``+ kl_coef * KL(pi || pi_ref)`` per token.

Shapes: ``B`` articles, ``K`` samples per article, ``N = B * K`` sampled sequences, ``T`` generated tokens,
``V`` vocabulary entries. Every function here is unit-tested on small literal tensors (tests/test_rl.py).

A note on token layout: ``model.generate`` for T5/mT5 returns ``[N, 1 + T]`` sequences whose first column
is ``decoder_start_token_id`` (the pad id, 0, for mT5), padded with ``pad_token_id`` after each row's EOS.
That first column is not a generated action: :func:`strip_decoder_start` removes it before the tokens are
used as labels or masked, otherwise a mask that drops padding would drop the start token and shift every
position by one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LABEL_PAD_ID = -100  # ignored by transformers' cross-entropy; marks positions outside a completion


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


def mixed_objective(rl_loss: torch.Tensor | None, ml_loss: torch.Tensor | None, gamma: float,
                    kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """The RL stage's objective: ``gamma * rl_loss + (1 - gamma) * ml_loss + kl_coef * kl``.

    The mix is Paulus et al. 2018's (they used ``gamma = 0.9984``: the RL loss is on a larger scale than the
    per-token cross-entropy); the KL anchor (``kl``: the mean per-token :func:`kl_to_reference`) keeps the
    policy near the supervised model, as in Ziegler et al. 2019 and RL4LMs. A term whose weight is 0 may be
    None (so ``gamma == 1`` needs no teacher-forced pass, ``kl_coef == 0`` no reference model).

    Raises:
        ValueError: ``gamma`` outside ``[0, 1]``, a negative ``kl_coef``, or a needed term is None.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    terms = []
    for weight, term, name in ((gamma, rl_loss, "rl_loss"), (1.0 - gamma, ml_loss, "ml_loss"), (kl_coef, kl, "kl")):
        if weight == 0.0:
            continue
        if term is None:
            raise ValueError(f"gamma={gamma}, kl_coef={kl_coef} needs {name}" if name != "rl_loss" or gamma != 1.0
                             else "gamma=1 needs rl_loss")
        terms.append(term if weight == 1.0 else weight * term)
    if not terms:
        raise ValueError("gamma=0 needs ml_loss")
    return terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, *,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per-token KL divergence of the policy to the reference model at the sampled positions:
    ``KL_t = sum_v p(v) (log p(v) - log p_ref(v))`` with ``p = softmax(logits[b, t] / temperature)`` and
    ``p_ref`` likewise from ``ref_logits``, the exact divergence of the two next-token distributions in the
    state the sample visited (lower variance than the one-sample estimate ``log p(y_t) - log p_ref(y_t)``,
    and never negative). The gradient flows into ``logits`` only; ``ref_logits`` is treated as a constant.

    Args:
        logits: ``[B, T, V]`` the policy's logits for the sampled sequences (teacher-forced).
        ref_logits: ``[B, T, V]`` the frozen reference model's logits for the same inputs.
        mask: ``[B, T]`` which positions belong to the samples (:func:`completion_mask`).
        temperature: the rollout temperature (both distributions are taken at it).

    Returns:
        ``[B, T]`` float32 KL per position (``>= 0``), exactly 0 outside ``mask``.

    Raises:
        ValueError: mismatched shapes or a non-positive temperature.
    """
    if logits.shape != ref_logits.shape or logits.dim() != 3 or mask.shape != logits.shape[:2]:
        raise ValueError(f"expected logits and ref_logits [B, T, V] and mask [B, T]; got {tuple(logits.shape)}, "
                         f"{tuple(ref_logits.shape)}, {tuple(mask.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    log_ref = F.log_softmax(ref_logits.detach().float() / temperature, dim=-1)
    per_token = (log_p.exp() * (log_p - log_ref)).sum(dim=-1).clamp(min=0.0)  # rounding can dip below 0
    return torch.where(mask.bool(), per_token, torch.zeros_like(per_token))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true (0 when there are none)."""
    mask = mask.bool()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)

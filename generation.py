"""Decoding presets and fast batched title generation, shared by evaluation, prediction and RL.

Decoding strategies are data: named sets of ``transformers.GenerationConfig`` fields kept in
``configs/generation_presets.json`` and passed to ``generate`` unchanged (the RL4LMs
``generation_kwargs`` idea). Batches are sorted by source length so little compute goes to padding,
and outputs are returned in input order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

PRESETS_FILE = Path(__file__).resolve().parent / "configs" / "generation_presets.json"
_SPECIAL_TOKEN_RE = re.compile(r"<extra_id_\d+>|</s>|<pad>|<unk>")


def load_presets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read decoding presets (name -> GenerationConfig fields) from JSON; ``_``-keys are comments.

    Raises:
        ValueError: the file is not an object of objects.
    """
    path = Path(path) if path else PRESETS_FILE
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    presets = {k: v for k, v in raw.items() if not k.startswith("_")}
    for name, fields in presets.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: preset {name!r} must be an object of GenerationConfig fields")
    return presets


MODEL_FIELDS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "max_new_tokens")
"""What a named preset keeps of the model's own generation config: special-token ids and the length limit."""


def resolve_generation_config(
    base,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
):
    """A ``GenerationConfig`` for ``generate``.

    With a ``preset`` name: the preset's fields over only the :data:`MODEL_FIELDS` of ``base`` (the model's
    special-token ids and ``max_new_tokens``), so nothing of another strategy stored in ``base`` (say the
    ``no_repeat_ngram_size`` of an export's selected preset) leaks into it. Without one: ``base`` as it is
    (an export's own strategy). Then ``overrides`` (None values ignored). Sampling fields are reset to
    neutral values for greedy/beam search.

    Raises:
        KeyError: unknown preset name (the message lists the known ones).
        ValueError: the resulting config is invalid (transformers' validation message).
    """
    from transformers import GenerationConfig

    presets = presets if presets is not None else load_presets()
    fields: dict[str, Any] = {}
    if base is None:
        config = GenerationConfig()
    elif preset is None:
        config = GenerationConfig.from_dict(base.to_dict())
    else:
        config = GenerationConfig(**{k: getattr(base, k) for k in MODEL_FIELDS if getattr(base, k, None) is not None})
    if preset is not None:
        if preset not in presets:
            raise KeyError(f"unknown decoding preset {preset!r}; known: {', '.join(sorted(presets))}")
        fields.update(presets[preset])
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not fields.get("do_sample", config.do_sample):
        fields.setdefault("do_sample", False)
        for name in ("temperature", "top_k", "top_p"):
            fields.setdefault(name, None)
    config.update(**fields)
    try:
        config.validate(strict=True)
    except TypeError:  # older signature
        config.validate()
    except ValueError as err:
        raise ValueError(f"invalid generation settings {fields}: {err}") from err
    return config


def generate_with(model, generation_config, **inputs) -> torch.Tensor:
    """``model.generate(**inputs, generation_config=generation_config)`` with that config as the whole strategy.

    ``generate`` in transformers 5 fills every field of the passed config left at its global default
    (``no_repeat_ngram_size`` None or 0, ``length_penalty`` 1.0, ...) from ``model.generation_config``, that
    is from the export's ``generation_config.json``: called plainly, an export that selected
    ``beam4_norepeat`` also blocks repeated 3-grams under ``PRESET=greedy``, in a sweep, and in RL rollouts.
    Here the model's default (and a PEFT model's base model's) is swapped for ``generation_config`` during
    the call and restored afterwards, also on error.

    Returns:
        ``generate``'s output: ``[batch * num_return_sequences, out_len]`` token ids.
    """
    targets = [model]
    if hasattr(model, "get_base_model"):  # peft: generate() runs on the base model
        targets.append(model.get_base_model())
    saved = [getattr(t, "generation_config", None) for t in targets]
    for t in targets:
        t.generation_config = generation_config
    try:
        return model.generate(**inputs, generation_config=generation_config)
    finally:
        for t, old in zip(targets, saved):
            t.generation_config = old


def clean_title(text: str) -> str:
    """Remove special tokens and newlines from a decoded title and trim it."""
    text = _SPECIAL_TOKEN_RE.sub("", text)
    return " ".join(text.replace("\r", " ").replace("\n", " ").split()).strip()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size``, longest sources first (stable for equal lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_titles(
    model,
    tokenizer,
    texts: Sequence[str],
    generation_config,
    *,
    batch_size: int = 16,
    max_source_length: int = 512,
    source_prefix: str = "",
    device: torch.device | str | None = None,
    bf16: bool = False,
    progress: bool = False,
) -> list[str]:
    """Generate one title per text with ``model.generate``, batched by source length.

    Args:
        texts: ``[n]`` source articles (an empty one still gets a title).
        generation_config: a ``GenerationConfig`` (see :func:`resolve_generation_config`).
        batch_size: articles per ``generate`` call.
        max_source_length: sources are truncated to this many tokens.
        bf16: autocast to bfloat16 (GPU inference).
        progress: show a tqdm bar with articles/second.

    Returns:
        ``[n]`` cleaned titles in input order.
    """
    from tqdm.auto import tqdm

    if not texts:
        return []
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sources = [source_prefix + t for t in texts]
    lengths = [len(ids) for ids in tokenizer(sources, truncation=True, max_length=max_source_length)["input_ids"]]
    titles: list[str | None] = [None] * len(texts)
    bar = tqdm(total=len(texts), unit="article", disable=not progress, desc="generate")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        for batch in length_sorted_batches(lengths, batch_size):
            enc = tokenizer([sources[i] for i in batch], truncation=True, max_length=max_source_length,
                            padding=True, return_tensors="pt").to(device)
            with autocast:
                out = generate_with(model, generation_config, **enc)
            decoded = tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, title in zip(batch, decoded):
                titles[i] = clean_title(title)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return titles  # type: ignore[return-value]

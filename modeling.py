"""Model and tokenizer factories: a pretrained mT5, or an mT5-architecture model from scratch.

From scratch means: an ``MT5Config`` from a local JSON file, random weights, and a sentencepiece
unigram tokenizer trained on the training texts (Kudo & Richardson 2018), laid out like mT5's
(pad 0, eos 1, unk 2, plus T5's ``<extra_id_*>`` tokens), saved with the model. This is what lets the
whole pipeline run offline on a CPU, and what the tests use.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# The published google/mt5-small config (vocab 250112, d_model 512, d_ff 1024, 8+8 layers, 6 heads,
# gated-gelu, untied lm_head). Used by benchmarks and the real-size test; no download needed.
MT5_SMALL_CONFIG = dict(
    vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
    relative_attention_num_buckets=32, dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
)


class VocabularySizeError(ValueError):
    """The corpus cannot give a sentencepiece model of the asked size: ``maximum`` (too few texts) or
    ``minimum`` (more distinct characters than pieces) says what it can give."""

    def __init__(self, message: str, vocab_size: int, maximum: int | None = None, minimum: int | None = None):
        super().__init__(message)
        self.vocab_size, self.maximum, self.minimum = vocab_size, maximum, minimum


def _vocabulary_size_error(err: RuntimeError, vocab_size: int, num_texts: int) -> ValueError:
    """sentencepiece's two size errors, in words that say what to change (other errors as they are)."""
    text = str(err)
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", text)
    if too_high:
        maximum = int(too_high.group(2))
        return VocabularySizeError(
            f"a {vocab_size}-piece tokenizer cannot be built from {num_texts} texts: they support at most {maximum} "
            f"pieces (use at most {maximum}, or train on more text)", vocab_size, maximum=maximum)
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", text)
    if too_low:
        minimum = int(too_low.group(2))
        return VocabularySizeError(
            f"a {vocab_size}-piece tokenizer cannot hold the {minimum} distinct characters of the {num_texts} "
            f"texts (their 99.95% character coverage, plus the special pieces): use at least {minimum}",
            vocab_size, minimum=minimum)
    return ValueError(f"sentencepiece training failed: {text}")


def train_sentencepiece_tokenizer(texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 8000,
                                  extra_ids: int = 100, max_sentences: int = 200_000):
    """Train a sentencepiece unigram model on ``texts`` and return it as a transformers ``T5Tokenizer``.

    The model file is written to ``output_dir/spiece.model`` and the tokenizer saved there with
    ``save_pretrained`` (transformers 5 ignores ``T5Tokenizer(vocab_file=...)``: loading from the
    directory is the reliable path). Ids follow mT5: pad 0, eos 1, unk 2, no bos.

    Args:
        texts: training sentences (articles and titles); whitespace-only ones are skipped.
        vocab_size: sentencepiece pieces, excluding the ``extra_ids`` sentinel tokens added on top.
        max_sentences: sentencepiece samples at most this many sentences.

    Raises:
        VocabularySizeError: ``vocab_size`` does not fit the texts (too large for too few texts, or smaller
            than their distinct characters); its message gives the bound.
        ValueError: no usable text, or another sentencepiece error.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    sentences = [t.replace("\n", " ").strip() for t in texts]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("cannot train a tokenizer: no non-empty text")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=0.9995, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, max_sentence_length=16384,
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as err:
        raise _vocabulary_size_error(err, vocab_size, len(sentences)) from err
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(out), extra_ids=extra_ids)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def get_tokenizer(name_or_path: str):
    """Load a tokenizer (hub name or local dir) with ``AutoTokenizer``; falls back to ``T5Tokenizer``
    for a directory that holds only ``spiece.model``."""
    from transformers import AutoTokenizer, T5Tokenizer

    path = Path(name_or_path)
    if path.is_dir() and (path / "spiece.model").exists() and not (path / "tokenizer_config.json").exists():
        return T5Tokenizer.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(name_or_path)


def read_config_json(config_name: str, vocab_size: int | None = None) -> dict:
    """Read ``MT5Config`` fields from a local JSON file. ``vocab_size`` (the tokenizer's length rounded
    up to a multiple of 8) is used when the file gives none or a smaller one. Keys starting with ``_``
    are comments."""
    with open(config_name, encoding="utf-8") as f:
        fields = json.load(f)
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    if vocab_size is not None and fields.get("vocab_size", 0) < vocab_size:
        fields["vocab_size"] = vocab_size
    return fields


def build_model_from_config(fields: dict) -> nn.Module:
    """Random-init ``MT5ForConditionalGeneration`` from ``MT5Config`` fields.

    transformers 5 always ties ``lm_head`` to the shared embeddings for ``MT5Config`` (whatever
    ``tie_word_embeddings`` says); when the fields ask for untied weights, as the real mt5-small does,
    ``lm_head`` gets its own parameter so the model has the published shape (300M parameters for
    mt5-small, not 172M).
    """
    from transformers import MT5Config, MT5ForConditionalGeneration

    model = MT5ForConditionalGeneration(MT5Config(**fields))
    if fields.get("tie_word_embeddings", True) is False and lm_head_is_tied(model):
        untie_lm_head(model)
    return model


def untie_lm_head(model: nn.Module) -> None:
    """Give ``lm_head`` its own random weight ``[vocab, d_model]`` with std ``d_model**-0.5``, so initial
    logits have unit scale (transformers 5 no longer rescales decoder outputs by ``d_model**-0.5``, and
    T5's std-1 init gives logits of std ``sqrt(d_model)`` and an initial loss far above ``ln(vocab)``)."""
    d_model = model.shared.weight.shape[1]
    model.lm_head.weight = nn.Parameter(torch.randn_like(model.shared.weight) * d_model**-0.5)
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        tied.pop("lm_head.weight", None)
    # so save/load (and CTranslate2) see the real state
    model.config.tie_word_embeddings = False


def lm_head_is_tied(model: nn.Module) -> bool:
    """True when ``lm_head`` shares its storage with the input embeddings."""
    return model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def get_model(model_name_or_path: str | None = None, config_name: str | None = None, vocab_size: int | None = None):
    """A pretrained ``MT5ForConditionalGeneration`` (hub name or local dir), or a random one from a
    local JSON config when ``config_name`` is given (``vocab_size`` overrides the config's).

    Raises:
        ValueError: neither argument given.
        OSError: the pretrained model cannot be found (transformers' message).
    """
    from transformers import AutoModelForSeq2SeqLM

    if config_name:
        return build_model_from_config(read_config_json(config_name, vocab_size))
    if not model_name_or_path:
        raise ValueError("give --model_name_or_path or --config_name")
    return AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; shared (tied) tensors counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def round_up(n: int, multiple: int = 8) -> int:
    return (n + multiple - 1) // multiple * multiple

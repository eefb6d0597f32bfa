"""Prune an mT5 vocabulary to the pieces a corpus needs ("Load What You Need", Abdaoui et al. 2020).

    python prune_vocab.py --model_name_or_path google/mt5-small --corpus data/train.jsonl \
        --output_dir models/mt5-small-zh [--corpus more.jsonl ...] [--keep_top N] [--min_count C] \
        [--keep_sentinels N] [--text_columns maintext title] [--pad_to_multiple_of 8] [--dry_run]

google/mt5-small keeps 256M of its 300M parameters in two 250,112 x 512 matrices (the input embeddings and
the untied ``lm_head``); a Chinese news model uses a small part of that vocabulary. This module removes the
pieces a corpus does not need from the sentencepiece model (through its ``ModelProto``), slices both
matrices to the kept rows, and writes an ordinary ``save_pretrained`` export that ``predict.py`` (both
backends) and ``AutoModelForSeq2SeqLM`` / ``AutoTokenizer`` load unchanged.

What is kept (:func:`select_pieces`):

* the special pieces (pad, eos, unk, and any control or user-defined piece) and every id the model's
  config or generation config names (pad, eos, decoder start);
* every piece the tokenizer produces on the corpus (``--keep_top`` / ``--min_count`` restrict these by
  frequency);
* every single-character piece of each character class the corpus uses (:func:`char_class`: the Unicode
  script for letters, e.g. Han or Latin; punctuation, digits and symbols by general category and
  256-code-point page, e.g. ASCII digits or CJK punctuation), plus the word-boundary piece ``▁``, so an
  unseen article falls back to single characters instead of ``<unk>``;
* the 256 byte pieces when the model uses sentencepiece byte fallback (mT5 does), so sentencepiece can
  still encode any text;
* the lowest-scoring normal piece: both sentencepiece and ``tokenizers`` score an unknown character as
  ``min(piece scores) - 10``, so keeping the minimum keeps that penalty, and with it the segmentation of
  text that contains unknown characters;
* optionally the first ``--keep_sentinels`` ``<extra_id_N>`` tokens (title fine-tuning never uses them).

Why segmentation is preserved: sentencepiece's unigram model (and the ``tokenizers`` Unigram that
transformers builds from it) picks the highest-scoring segmentation (Viterbi) among the pieces in the
vocabulary. Pruning keeps every piece of the original best segmentation of every corpus text, with its
score, and only removes alternatives, so the best segmentation stays the best (ties aside). This is
checked after pruning on every corpus text, for the transformers tokenizer and for sentencepiece itself,
and a mismatch raises :class:`SegmentationMismatch` (nothing is written).

How ids are remapped: kept pieces keep their relative order, so pad 0, eos 1 and unk 2 stay where they
are. In transformers 5 a ``T5Tokenizer`` built from ``spiece.model`` gives every sentencepiece piece its
sentencepiece id and appends the ``extra_ids`` sentinels after them in reverse order (``<extra_id_0>`` is
the last id). The pruned tokenizer is built the same way from the pruned model, and row ``i`` of the new
matrices is the old row of the token with the same string (:func:`id_mapping`); no id arithmetic is
assumed. Optional padding rows (``--pad_to_multiple_of``) copy ``<pad>``'s rows (see
:func:`slice_vocabulary`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from data_io import DataError, read_jsonl
from export import PROMPT_ADAPTER_DIR, swap_dir
from modeling import count_parameters, get_tokenizer, lm_head_is_tied

logger = logging.getLogger("prune_vocab")

T5_FAMILY = ("t5", "mt5")  # sentencepiece unigram vocabularies with T5's layout
PRUNE_INFO = "prune_info.json"
# files of a source export that pruning rewrites (everything else at the top level is copied unchanged)
REWRITTEN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
                   "spiece.model", "special_tokens_map.json", "added_tokens.json", PRUNE_INFO)
WEIGHT_SHARD_PREFIXES = ("model-", "pytorch_model-")
UNK_PENALTY = 10.0  # sentencepiece and tokenizers: score of an unknown character = min piece score - 10
WORD_BOUNDARY = "\u2581"  # sentencepiece's whitespace piece

# sentencepiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Scripts named as one class however many code pages they span; any other character is classed by
# general category and 256-code-point page (which separates ASCII digits from CJK punctuation).
NAMED_SCRIPTS = ("Han", "Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Armenian", "Georgian", "Hangul",
                 "Hiragana", "Katakana", "Bopomofo", "Devanagari", "Bengali", "Tamil", "Thai", "Khmer", "Myanmar",
                 "Ethiopic")


class PruneError(ValueError):
    """Vocabulary pruning cannot proceed (bad corpus, unsupported model or tokenizer, bad arguments)."""


class SegmentationMismatch(PruneError):
    """The pruned tokenizer segments a corpus text differently from the original one."""


# ----------------------------------------------------------------------------------------------- characters

_script_re = None


def char_class(char: str) -> str:
    """The character class used for the single-character fallback: a script name from
    :data:`NAMED_SCRIPTS` (``"Han"``, ``"Latin"``...), else ``"<major category>@U+<page>xx"`` (for example
    ``"N@U+00xx"`` ASCII digits, ``"P@U+30xx"`` CJK punctuation, ``"S@U+1F6xx"`` emoji).

    Uses the ``regex`` package's Unicode script property (a dependency of transformers).
    """
    global _script_re
    if _script_re is None:
        import regex

        _script_re = regex.compile("|".join(rf"(?P<{name}>\p{{Script={name}}})" for name in NAMED_SCRIPTS))
    match = _script_re.match(char)
    if match:
        return match.lastgroup
    return f"{unicodedata.category(char)[0]}@U+{ord(char) >> 8:02X}xx"


# ----------------------------------------------------------------------------------------------- sentencepiece

def _model_pb2():
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def parse_sentencepiece_model(data: bytes | str | os.PathLike):
    """A sentencepiece ``ModelProto`` from serialized bytes or a ``.model`` file.

    Raises:
        PruneError: the file is missing or not a sentencepiece model.
    """
    proto = _model_pb2().ModelProto()
    if not isinstance(data, bytes):
        path = Path(data)
        if not path.is_file():
            raise PruneError(f"{path}: sentencepiece model not found")
        data = path.read_bytes()
    try:
        proto.ParseFromString(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise PruneError(f"not a sentencepiece model: {err}") from err
    if not proto.pieces:
        raise PruneError("not a sentencepiece model: no pieces")
    return proto


def sentencepiece_model_from_tokenizer(tokenizer):
    """The sentencepiece ``ModelProto`` behind a transformers T5 tokenizer.

    Read from ``tokenizer.vocab_file`` when that ``spiece.model`` still exists (hub mT5, and exports that
    keep it). transformers 5's ``save_pretrained`` writes only ``tokenizer.json``, so otherwise the model is
    rebuilt from the tokenizer's Unigram vocabulary (pieces and scores), its precompiled normalizer and its
    special tokens; it has byte fallback when the vocabulary holds all 256 ``<0xXX>`` pieces (mT5's
    layout), although the transformers tokenizer itself never falls back to bytes.

    Raises:
        PruneError: the tokenizer is not a sentencepiece Unigram tokenizer.
    """
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if vocab_file and Path(vocab_file).is_file() and str(vocab_file).endswith(".model"):
        return parse_sentencepiece_model(vocab_file)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PruneError(f"{type(tokenizer).__name__} has no tokenizers backend and no spiece.model")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "Unigram":
        raise PruneError(f"the tokenizer's model is {model.get('type')!r}, not a sentencepiece Unigram model")
    vocab = [(piece, float(score)) for piece, score in model["vocab"]]
    sentinels = _sentinel_suffix([piece for piece, _ in vocab])
    vocab = vocab[: len(vocab) - sentinels]
    specials = {str(t) for t in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) if t is not None}
    unk_id = model.get("unk_id")
    # transformers' T5Tokenizer never uses byte fallback, but a complete set of <0xXX> pieces means the
    # original sentencepiece model did (mT5): rebuild it that way, so the written spiece.model behaves
    # like the original one (sentencepiece refuses byte pieces without byte fallback)
    byte_fallback = len({piece for piece, _ in vocab if _is_byte_piece(piece)}) == 256
    pb2 = _model_pb2()
    proto = pb2.ModelProto()
    for i, (piece, score) in enumerate(vocab):
        if i == unk_id:
            kind = UNKNOWN
        elif piece in specials:
            kind = CONTROL
        elif byte_fallback and _is_byte_piece(piece):
            kind = BYTE
        else:
            kind = NORMAL
        proto.pieces.add(piece=piece, score=0.0 if kind in (UNKNOWN, CONTROL, BYTE) else score, type=kind)
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    spec = proto.trainer_spec
    spec.model_type = pb2.TrainerSpec.UNIGRAM
    spec.vocab_size = len(vocab)
    spec.unk_id = unk_id if unk_id is not None else -1
    spec.pad_id = ids.get(str(tokenizer.pad_token), -1) if tokenizer.pad_token else -1
    spec.eos_id = ids.get(str(tokenizer.eos_token), -1) if tokenizer.eos_token else -1
    spec.bos_id = ids.get(str(tokenizer.bos_token), -1) if tokenizer.bos_token else -1
    spec.byte_fallback = byte_fallback
    charsmap = _precompiled_charsmap(data.get("normalizer"))
    norm = proto.normalizer_spec
    norm.name = "nmt_nfkc" if charsmap else "identity"
    if charsmap:
        norm.precompiled_charsmap = charsmap
    norm.add_dummy_prefix = True  # the Metaspace pre-tokenizer's prepend_scheme "always"
    norm.remove_extra_whitespaces = True  # WhitespaceSplit
    norm.escape_whitespaces = True
    return proto


def _precompiled_charsmap(normalizer: dict | None) -> bytes:
    if not normalizer:
        return b""
    parts = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            return base64.b64decode(part["precompiled_charsmap"])
    return b""


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">") and all(
        c in "0123456789ABCDEF" for c in piece[3:5])


def _sentinel_suffix(tokens: Sequence[str]) -> int:
    """How many trailing tokens are ``<extra_id_N>`` sentinels."""
    n = 0
    while n < len(tokens) and tokens[-1 - n].startswith("<extra_id_") and tokens[-1 - n].endswith(">"):
        n += 1
    return n


def check_tokenizer(tokenizer, proto) -> int:
    """Check that ``tokenizer`` is the transformers form of ``proto`` with only sentinels added, and return
    the number of ``<extra_id_N>`` sentinels it has.

    In transformers 5, ``T5Tokenizer`` gives sentencepiece piece ``i`` the id ``i`` and appends the sentinels
    after the pieces; any other layout (added tokens, reordered ids) is refused rather than guessed.

    Raises:
        PruneError: a different tokenizer class or layout, or ``spiece.model`` and ``tokenizer.json`` disagree.
    """
    from transformers import T5Tokenizer

    if not isinstance(tokenizer, T5Tokenizer):
        raise PruneError(f"expected a T5Tokenizer (sentencepiece unigram, mT5 layout), got {type(tokenizer).__name__}")
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    n_pieces = len(proto.pieces)
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) < n_pieces:
        raise PruneError(f"the tokenizer's ids are not 0..{len(by_id) - 1} over {n_pieces} sentencepiece pieces "
                         "plus sentinels")
    for i, piece in enumerate(proto.pieces):
        if by_id[i] != piece.piece:
            raise PruneError(f"the sentencepiece model and the tokenizer disagree at id {i} ({piece.piece!r} vs "
                             f"{by_id[i]!r}): spiece.model does not belong to this tokenizer")
    extra = [by_id[i] for i in range(n_pieces, len(by_id))]
    expected = [f"<extra_id_{k}>" for k in range(len(extra) - 1, -1, -1)]
    if extra != expected:
        others = [t for t in extra if not t.startswith("<extra_id_")]
        raise PruneError("the tokenizer has tokens beyond its sentencepiece pieces other than <extra_id_N> sentinels "
                         f"in T5's order ({others[:5] or extra[:5]}); added tokens are not supported")
    return len(extra)


def prune_sentencepiece_model(proto, kept_ids: Sequence[int]):
    """A copy of ``proto`` with only the pieces ``kept_ids`` (sorted, unique sentencepiece ids), each with
    its piece string, score and type; the normalizer, denormalizer and trainer specs are kept
    (``trainer_spec.vocab_size`` is set to the new size; ``unk_id`` / ``pad_id`` / ``bos_id`` / ``eos_id``
    are remapped).

    Raises:
        PruneError: ``kept_ids`` unsorted, duplicated or out of range, or a special id of the trainer spec
            is not kept.
    """
    kept_ids = list(kept_ids)
    if kept_ids != sorted(set(kept_ids)) or (kept_ids and not 0 <= kept_ids[0] <= kept_ids[-1] < len(proto.pieces)):
        raise PruneError("kept ids must be sorted, unique sentencepiece ids")
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    pruned = _model_pb2().ModelProto()
    pruned.CopyFrom(proto)
    del pruned.pieces[:]
    for old in kept_ids:
        pruned.pieces.add().CopyFrom(proto.pieces[old])
    spec = pruned.trainer_spec
    spec.vocab_size = len(kept_ids)
    for name in ("unk_id", "pad_id", "bos_id", "eos_id"):
        old = getattr(proto.trainer_spec, name)
        if old >= 0:
            if old not in old_to_new:
                raise PruneError(f"the sentencepiece {name} {old} is not among the kept pieces")
            setattr(spec, name, old_to_new[old])
    return pruned


def tokenizer_from_sentencepiece(proto, extra_ids: int, like=None):
    """A transformers ``T5Tokenizer`` for ``proto`` with ``extra_ids`` sentinels, built the supported way:
    ``spiece.model`` in a directory, ``T5Tokenizer.from_pretrained`` (transformers 5 ignores
    ``T5Tokenizer(vocab_file=...)``). Special-token strings and ``model_max_length`` follow ``like``.
    The temporary directory is removed; ``vocab_file`` is cleared so nothing points into it."""
    from transformers import T5Tokenizer

    kwargs: dict[str, Any] = {"extra_ids": extra_ids}
    if like is not None:
        kwargs.update(pad_token=str(like.pad_token), eos_token=str(like.eos_token), unk_token=str(like.unk_token))
        if getattr(like, "model_max_length", None):
            kwargs["model_max_length"] = like.model_max_length
    with tempfile.TemporaryDirectory(prefix="prune-vocab-") as tmp:
        (Path(tmp) / "spiece.model").write_bytes(proto.SerializeToString())
        tokenizer = T5Tokenizer.from_pretrained(tmp, **kwargs)
    tokenizer.vocab_file = None
    tokenizer.init_kwargs.pop("vocab_file", None)
    tokenizer.name_or_path = ""
    return tokenizer


def id_mapping(old_tokenizer, new_tokenizer) -> list[int]:
    """``new_to_old[new_id] = old_id``: each new token's id in the old tokenizer, matched by token string
    (sentencepiece pieces and sentinels are unique strings).

    Raises:
        PruneError: a new token the old tokenizer does not have.
    """
    old_vocab = old_tokenizer.get_vocab()
    new_vocab = new_tokenizer.get_vocab()
    new_to_old = [0] * len(new_vocab)
    for token, new_id in new_vocab.items():
        if token not in old_vocab:
            raise PruneError(f"pruned token {token!r} is not in the original vocabulary")
        new_to_old[new_id] = old_vocab[token]
    return new_to_old


# ----------------------------------------------------------------------------------------------- corpus

@dataclass
class CorpusStatistics:
    """What the original tokenizer makes of a corpus.

    ``piece_counts`` counts transformers token ids (sentencepiece ids below the sentinels);
    ``char_counts`` the corpus's non-whitespace characters after the tokenizer's normalisation (NFKC for
    mT5), which is the form the vocabulary's pieces have.
    """

    num_texts: int
    num_tokens: int  # transformers tokens, no EOS
    unk_tokens: int
    num_chars: int  # non-whitespace characters of the raw texts
    unk_chars: int  # of those, the ones inside <unk> tokens
    piece_counts: Counter
    sentencepiece_ids: set  # ids sentencepiece itself produces (byte pieces included)
    char_counts: Counter

    @property
    def char_coverage(self) -> float:
        """Share of the corpus characters the vocabulary encodes without ``<unk>``."""
        return 1.0 - self.unk_chars / self.num_chars if self.num_chars else 0.0

    @property
    def normalized_chars(self) -> int:
        return sum(self.char_counts.values())


def _chunks(items: Sequence, size: int = 1024) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _backend(tokenizer):
    """The tokenizers backend with truncation and padding off (a copy when they were on)."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def corpus_statistics(tokenizer, proto, texts: Sequence[str]) -> CorpusStatistics:
    """Tokenize ``texts`` with ``tokenizer`` (and sentencepiece ``proto``) and count pieces and characters."""
    import sentencepiece as spm

    backend = _backend(tokenizer)
    normalizer = backend.normalizer
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    unk_id = tokenizer.unk_token_id
    counts: Counter = Counter()
    chars: Counter = Counter()
    sp_ids: set = set()
    num_tokens = unk_tokens = unk_chars = num_chars = 0
    for chunk in _chunks(texts):
        for text, encoding in zip(chunk, backend.encode_batch(list(chunk), add_special_tokens=False)):
            counts.update(encoding.ids)
            num_tokens += len(encoding.ids)
            num_chars += len(text) - sum(map(str.isspace, text))
            if unk_id in encoding.ids:
                for token_id, (start, end) in zip(encoding.ids, encoding.offsets):
                    if token_id == unk_id:
                        unk_tokens += 1
                        unk_chars += sum(not c.isspace() for c in text[start:end])
            normalized = normalizer.normalize_str(text) if normalizer is not None else text
            chars.update(c for c in normalized if not c.isspace())
        for ids in sp.encode(list(chunk)):
            sp_ids.update(ids)
    return CorpusStatistics(len(texts), num_tokens, unk_tokens, num_chars, unk_chars, counts, sp_ids, chars)


def read_corpus(paths: Sequence[str | os.PathLike], text_columns: Sequence[str] = ("maintext", "title")
                ) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts from JSON-lines files (``.jsonl``/``.json``: the ``text_columns`` fields of every record, read
    with :func:`data_io.read_jsonl`, so records need an ``id`` and the first column; the others may be
    missing) or plain-text files (any other name: one text per line, UTF-8).

    Returns:
        ``(texts, files)``: the non-empty texts in file order, and per file ``{"path", "bytes", "texts"}``.

    Raises:
        DataError: a missing or unreadable file, bad UTF-8 or a malformed record (``FILE:LINE: message``),
            a column no record has, or a file without any non-empty text.
    """

    if not text_columns:
        raise PruneError("no text columns given")
    texts: list[str] = []
    files: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if path.suffix in (".jsonl", ".json"):
            records = read_jsonl(path, text_column=text_columns[0],
                                 summary_column=text_columns[1] if len(text_columns) > 1 else text_columns[0],
                                 require_summary=False, allow_empty_text=True)
            found: list[str] = []
            for column in text_columns:
                values = [r.get(column) for r in records]
                if records and all(v is None for v in values):
                    raise DataError(path, f"no record has the field {column!r} (--text_columns)")
                for record, value in zip(records, values):
                    if value is not None and not isinstance(value, str):
                        raise DataError(path, f"record id {record['id']!r}: field {column!r} must be a string, "
                                              f"got {type(value).__name__}")
            for record in records:
                found += [record[c] for c in text_columns if isinstance(record.get(c), str) and record[c].strip()]
        else:
            found = [line for line in _read_text_lines(path) if line.strip()]
        if not found:
            what = f"columns {', '.join(text_columns)}" if path.suffix in (".jsonl", ".json") else "lines"
            raise DataError(path, f"empty corpus file: no non-empty text in its {what}")
        texts += found
        files.append({"path": str(path), "bytes": path.stat().st_size, "texts": len(found)})
    return texts, files


def _read_text_lines(path: Path) -> list[str]:

    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    lines = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as err:
            raise DataError(path, f"not valid UTF-8 (byte {err.start}): save the file as UTF-8", lineno) from err
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


# ----------------------------------------------------------------------------------------------- selection

def select_pieces(
    proto,
    piece_counts: Counter,
    corpus_char_classes: set[str],
    *,
    seen_ids: Iterable[int] = (),
    required_ids: Iterable[int] = (),
    keep_top: int | None = None,
    min_count: int = 1,
) -> tuple[list[int], dict[str, int]]:
    """Choose the sentencepiece pieces to keep (pure: no tokenizer or model needed).

    Args:
        proto: the sentencepiece ``ModelProto``.
        piece_counts: corpus frequency of each sentencepiece id.
        corpus_char_classes: :func:`char_class` of every corpus character.
        seen_ids: further ids the corpus uses (sentencepiece's own segmentation), treated as count 0.
        required_ids: ids to keep whatever happens (the config's pad/eos/decoder start).
        keep_top: keep at most this many corpus pieces (normal and byte pieces; specials are kept anyway),
            the most frequent first (ties: lower id first).
        min_count: keep only corpus pieces seen at least this many times.

    Returns:
        ``(kept_ids, reasons)``: sorted sentencepiece ids, and how many were kept for each reason (a piece
        counts under the first reason that applies: special, corpus, char_fallback, byte_fallback,
        min_score).
    """
    pieces = proto.pieces
    n = len(pieces)
    reasons: dict[str, int] = {"special": 0, "corpus": 0, "char_fallback": 0, "byte_fallback": 0, "min_score": 0}
    kept: dict[int, str] = {}

    def keep(i: int, reason: str) -> None:
        if i not in kept:
            kept[i] = reason
            reasons[reason] += 1

    for i, piece in enumerate(pieces):
        if piece.type in (UNKNOWN, CONTROL, USER_DEFINED):
            keep(i, "special")
    for i in required_ids:
        if 0 <= i < n:
            keep(i, "special")
    content = (NORMAL, BYTE)
    ranked = sorted((i for i, c in piece_counts.items() if 0 <= i < n and c >= min_count and pieces[i].type in content),
                    key=lambda i: (-piece_counts[i], i))[:keep_top]
    if keep_top is None and min_count <= 1:  # no frequency restriction: everything the corpus uses
        ranked += sorted(i for i in seen_ids if 0 <= i < n and pieces[i].type in content)
    for i in ranked:
        keep(i, "corpus")
    for i, piece in enumerate(pieces):
        if piece.type == NORMAL and len(piece.piece) == 1 and (
                piece.piece == WORD_BOUNDARY or char_class(piece.piece) in corpus_char_classes):
            keep(i, "char_fallback")
    if proto.trainer_spec.byte_fallback:
        for i, piece in enumerate(pieces):
            if piece.type == BYTE:
                keep(i, "byte_fallback")
    normal = [i for i, piece in enumerate(pieces) if piece.type == NORMAL]
    if normal:
        keep(min(normal, key=lambda i: (pieces[i].score, -i)), "min_score")
    return sorted(kept), reasons


# ----------------------------------------------------------------------------------------------- model

def check_model(model) -> None:
    """Raises :class:`PruneError` unless ``model`` is a T5/mT5 encoder-decoder with an ``lm_head``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in T5_FAMILY:
        raise PruneError(f"model type {model_type!r} is not supported: vocabulary pruning handles "
                         f"{'/'.join(T5_FAMILY)} models with a sentencepiece unigram vocabulary")
    if model.get_output_embeddings() is None:
        raise PruneError("the model has no lm_head")


def slice_vocabulary(model, new_to_old: Sequence[int], pad_to_multiple_of: int = 1, pad_row: int = 0) -> int:
    """Keep rows ``new_to_old`` (original ids, in the new order) of the input embeddings (``shared``, used by
    encoder and decoder) and of ``lm_head``, in place; return the new row count.

    A tied ``lm_head`` stays tied (one parameter), an untied one stays untied (its own parameter, removed
    from ``all_tied_weights_keys`` so ``save_pretrained`` writes it and ``from_pretrained`` does not tie it).
    With ``pad_to_multiple_of > 1`` the row count is rounded up (matrix shapes GPUs like) and the extra rows
    copy original row ``pad_row`` (``<pad>``): they decode to nothing, score exactly like ``<pad>``, which a trained
    model never emits, and get the same gradient, so they stay copies of it through fine-tuning; they do
    add their mass to the softmax, so only with no padding is the pruned model exactly the original
    restricted to the kept tokens. ``config.vocab_size`` is set to the new row count.
    """
    import torch
    from torch import nn

    rows = len(new_to_old)
    if pad_to_multiple_of > 1:
        rows = (rows + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of
    index = list(new_to_old) + [pad_row] * (rows - len(new_to_old))
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    index_t = torch.tensor(index, dtype=torch.long, device=weight.device)
    tied = lm_head_is_tied(model)
    old_head = model.get_output_embeddings()
    with torch.no_grad():
        new_embeddings = nn.Embedding(rows, weight.shape[1], device=weight.device, dtype=weight.dtype)
        new_embeddings.weight = nn.Parameter(weight.detach().index_select(0, index_t).clone(),
                                             requires_grad=weight.requires_grad)
        head_weight = old_head.weight
        new_head = nn.Linear(head_weight.shape[1], rows, bias=False, device=head_weight.device, dtype=head_weight.dtype)
        if tied:
            new_head.weight = new_embeddings.weight
        else:
            new_head.weight = nn.Parameter(
                head_weight.detach().index_select(0, index_t.to(head_weight.device)).clone(),
                requires_grad=head_weight.requires_grad)
    model.set_input_embeddings(new_embeddings)
    model.set_output_embeddings(new_head)
    tied_keys = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied_keys, dict):
        if tied:
            tied_keys.setdefault("lm_head.weight", "shared.weight")
        else:
            tied_keys.pop("lm_head.weight", None)
    model.config.vocab_size = rows
    return rows


_ID_FIELDS = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")
_GENERATION_ID_FIELDS = _ID_FIELDS + ("forced_bos_token_id", "forced_eos_token_id")


def referenced_token_ids(model) -> set[int]:
    """Token ids the model's config and generation config name (pad, eos, bos, decoder start, forced)."""
    ids: set[int] = set()
    for obj, names in ((model.config, _ID_FIELDS), (getattr(model, "generation_config", None), _GENERATION_ID_FIELDS)):
        for name in names if obj is not None else ():
            value = getattr(obj, name, None)
            ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return {int(i) for i in ids}


def remap_config_ids(model, old_to_new: dict[int, int]) -> None:
    """Rewrite token ids in ``model.config`` and ``model.generation_config`` to the pruned ids: the special
    ids must be kept; ``suppress_tokens`` / ``begin_suppress_tokens`` / ``bad_words_ids`` entries for
    removed tokens are dropped (those tokens cannot be generated any more).

    Raises:
        PruneError: a special id was removed, or a field that cannot be remapped is set
            (``sequence_bias``, ``force_words_ids``).
    """
    config = getattr(model, "generation_config", None)
    for name in ("sequence_bias", "force_words_ids"):
        if config is not None and getattr(config, name, None):
            raise PruneError(f"generation_config.{name} is set; remap or remove it before pruning")

    def one(value, where: str):
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [one(v, where) for v in value]
        if int(value) not in old_to_new:
            raise PruneError(f"{where} = {value} is not among the kept tokens")
        return old_to_new[int(value)]

    for name in _ID_FIELDS:
        setattr(model.config, name, one(getattr(model.config, name, None), f"config.{name}"))
    if config is None:
        return
    for name in _GENERATION_ID_FIELDS:
        setattr(config, name, one(getattr(config, name, None), f"generation_config.{name}"))
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = getattr(config, name, None)
        if value is not None:
            setattr(config, name, [old_to_new[i] for i in value if i in old_to_new])
    if getattr(config, "bad_words_ids", None) is not None:
        config.bad_words_ids = [[old_to_new[i] for i in seq] for seq in config.bad_words_ids
                                if all(i in old_to_new for i in seq)] or None


def projected_parameters(total: int, old_rows: int, new_rows: int, d_model: int, tied: bool) -> int:
    """Parameter count after pruning: ``total`` minus the removed rows of the embeddings (and of the
    untied ``lm_head``)."""
    return total - (old_rows - new_rows) * d_model * (1 if tied else 2)


# ----------------------------------------------------------------------------------------------- pruning

@dataclass
class PruneInfo:
    """What pruning did; written as ``prune_info.json`` into the export (fields with ``_`` excluded)."""

    original_pieces: int  # sentencepiece pieces
    kept_pieces: int
    original_vocab: int  # transformers tokenizer length (pieces + sentinels)
    kept_vocab: int
    original_rows: int  # embedding / lm_head rows
    kept_rows: int
    kept_sentinels: int
    pad_to_multiple_of: int
    kept_by_reason: dict[str, int]
    keep_top: Optional[int]
    min_count: int
    lm_head_tied: bool
    num_texts: int
    num_tokens: int
    num_chars: int
    distinct_pieces_seen: int
    token_coverage: float  # share of corpus tokens that are kept pieces other than <unk>
    unk_token_share: float
    char_coverage: float  # share of corpus characters encoded without <unk>
    char_fallback_share: float  # share of corpus characters that have a kept single-character piece
    char_classes: list[str]
    texts_resegmented: int  # corpus texts segmented differently (only with keep_top / min_count)
    texts_with_new_unk: int
    parameters_before: Optional[int] = None
    parameters_after: Optional[int] = None
    corpus_files: list[dict[str, Any]] = field(default_factory=list)
    source: Optional[str] = None  # the source model (exports only)
    sentencepiece_byte_fallback: bool = False
    _new_to_old: list[int] = field(default_factory=list, repr=False)
    _sentencepiece_model: bytes = field(default=b"", repr=False)

    @property
    def new_to_old(self) -> list[int]:
        """``new_to_old[new_id]`` = the original token id (padding rows excluded)."""
        return self._new_to_old

    @property
    def sentencepiece_model(self) -> bytes:
        """The pruned ``spiece.model`` (serialized ``ModelProto``)."""
        return self._sentencepiece_model

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass
class PrunePlan:
    """The tokenizer side of pruning, before any model is touched."""

    tokenizer: Any  # the pruned T5Tokenizer
    proto: Any  # the pruned sentencepiece ModelProto
    new_to_old: list[int]
    info: PruneInfo


def plan_pruning(
    tokenizer,
    texts: Sequence[str],
    *,
    keep_top: int | None = None,
    min_count: int = 1,
    keep_sentinels: int = 0,
    min_coverage: float = 0.9,
    required_ids: Iterable[int] = (),
    sp_model=None,
) -> PrunePlan:
    """Build the pruned tokenizer for ``texts`` and check that it segments them as ``tokenizer`` does.

    Args:
        tokenizer: the original transformers ``T5Tokenizer``.
        texts: corpus texts (empty ones are ignored).
        keep_top / min_count: restrict the corpus pieces by frequency (see :func:`select_pieces`); the
            specials and the character and byte fallback are always kept.
        keep_sentinels: keep ``<extra_id_0>`` .. ``<extra_id_{N-1}>``.
        min_coverage: refuse a corpus when less than this share of its characters is encoded without
            ``<unk>`` (a script the vocabulary lacks).
        required_ids: original ids to keep (the model's special ids).
        sp_model: the sentencepiece model (``ModelProto``, bytes or path); default: see
            :func:`sentencepiece_model_from_tokenizer`.

    Raises:
        PruneError: empty corpus, too low coverage, nothing but specials to keep, bad arguments, an
            unsupported tokenizer; :class:`SegmentationMismatch` when the pruned tokenizer segments a corpus
            text differently (with keep_top/min_count: a text all of whose pieces were kept).
    """
    if keep_top is not None and keep_top < 1:
        raise PruneError(f"keep_top must be positive, got {keep_top}")
    if min_count < 1:
        raise PruneError(f"min_count must be at least 1, got {min_count}")
    if keep_sentinels < 0:
        raise PruneError(f"keep_sentinels must be 0 or more, got {keep_sentinels}")
    if sp_model is None:
        proto = sentencepiece_model_from_tokenizer(tokenizer)
    elif isinstance(sp_model, (bytes, str, os.PathLike)):
        proto = parse_sentencepiece_model(sp_model)
    else:
        proto = sp_model
    source_sentinels = check_tokenizer(tokenizer, proto)
    if keep_sentinels > source_sentinels:
        raise PruneError(f"keep_sentinels {keep_sentinels}: the tokenizer has only {source_sentinels} sentinels")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise PruneError("empty corpus: no non-empty text to prune the vocabulary to")

    stats = corpus_statistics(tokenizer, proto, texts)
    n_pieces = len(proto.pieces)
    class_counts: Counter = Counter()
    for char, count in stats.char_counts.items():
        class_counts[char_class(char)] += count
    main_classes = ", ".join(f"{c} ({n:,} characters)" for c, n in class_counts.most_common(3)) or "none"
    if stats.char_coverage < min_coverage:
        raise PruneError(
            f"the vocabulary does not cover this corpus: only {stats.char_coverage:.1%} of its {stats.num_chars:,} "
            f"characters are encoded without <unk> (minimum {min_coverage:.0%}); its main character classes: "
            f"{main_classes}. A corpus in a script the model's vocabulary lacks cannot be pruned to")
    content = [i for i in stats.piece_counts if i < n_pieces and proto.pieces[i].type in (NORMAL, BYTE)
               and proto.pieces[i].piece != WORD_BOUNDARY]
    if not content:
        raise PruneError("the corpus uses no piece but special tokens: nothing to keep but the specials")
    if stats.unk_tokens:
        log = logger.warning if stats.char_coverage < 0.99 else logger.info
        log("%.2f%% of the corpus characters are <unk> for this vocabulary (they stay <unk>)",
            100 * (1 - stats.char_coverage))
    classes = set(class_counts)
    kept_ids, reasons = select_pieces(proto, stats.piece_counts, classes, seen_ids=stats.sentencepiece_ids,
                                      required_ids=[i for i in required_ids if i < n_pieces],
                                      keep_top=keep_top, min_count=min_count)
    for i in required_ids:
        if i >= n_pieces and n_pieces + source_sentinels - 1 - i >= keep_sentinels:
            raise PruneError(f"the model's config names token id {i} ({tokenizer.convert_ids_to_tokens(i)}), a "
                             f"sentinel that keep_sentinels={keep_sentinels} removes")
    pruned_proto = prune_sentencepiece_model(proto, kept_ids)
    pruned = tokenizer_from_sentencepiece(pruned_proto, keep_sentinels, like=tokenizer)
    new_to_old = id_mapping(tokenizer, pruned)
    for new_id, old_id in enumerate(new_to_old[:len(kept_ids)]):
        if old_id != kept_ids[new_id]:
            raise PruneError(f"unexpected id layout of the pruned tokenizer at id {new_id}")
    resegmented, new_unk = check_segmentation(tokenizer, pruned, new_to_old, texts, proto, pruned_proto,
                                              exact=keep_top is None and min_count <= 1)
    kept_set = set(kept_ids)
    kept_tokens = sum(c for i, c in stats.piece_counts.items() if i in kept_set and i != tokenizer.unk_token_id)
    single = {p.piece for p in pruned_proto.pieces if p.type == NORMAL and len(p.piece) == 1}
    with_fallback = sum(c for ch, c in stats.char_counts.items() if ch in single)
    normalized_chars = stats.normalized_chars
    info = PruneInfo(
        original_pieces=n_pieces, kept_pieces=len(kept_ids), original_vocab=len(tokenizer), kept_vocab=len(pruned),
        original_rows=0, kept_rows=0, kept_sentinels=keep_sentinels, pad_to_multiple_of=1,
        kept_by_reason={**reasons, "sentinels": keep_sentinels}, keep_top=keep_top, min_count=min_count,
        lm_head_tied=False, num_texts=stats.num_texts, num_tokens=stats.num_tokens, num_chars=stats.num_chars,
        distinct_pieces_seen=len(stats.piece_counts),
        token_coverage=kept_tokens / stats.num_tokens if stats.num_tokens else 0.0,
        unk_token_share=stats.unk_tokens / stats.num_tokens if stats.num_tokens else 0.0,
        char_coverage=stats.char_coverage,
        char_fallback_share=with_fallback / normalized_chars if normalized_chars else 0.0,
        char_classes=sorted(classes), texts_resegmented=resegmented, texts_with_new_unk=new_unk,
        sentencepiece_byte_fallback=bool(proto.trainer_spec.byte_fallback),
        _new_to_old=new_to_old, _sentencepiece_model=pruned_proto.SerializeToString())
    return PrunePlan(pruned, pruned_proto, new_to_old, info)


def check_segmentation(old_tokenizer, new_tokenizer, new_to_old: Sequence[int], texts: Sequence[str],
                       old_proto=None, new_proto=None, *, exact: bool = True) -> tuple[int, int]:
    """Compare the two tokenizers on every text: the new ids, mapped back through ``new_to_old``, must equal
    the old ids (the transformers tokenizers), and the two sentencepiece models must produce the same
    pieces (byte pieces included) when both are given.

    With ``exact=False`` (pieces were dropped by frequency) only texts whose original pieces were all kept
    must match; the others are counted.

    Returns:
        ``(resegmented, with_new_unk)``: texts segmented differently, and those among them with more
        ``<unk>`` tokens than before (always ``(0, 0)`` when ``exact``).

    Raises:
        SegmentationMismatch: naming the first text that differs and the two segmentations.
    """
    kept_old = set(new_to_old)
    old_unk, new_unk_id = old_tokenizer.unk_token_id, new_tokenizer.unk_token_id
    old_backend, new_backend = _backend(old_tokenizer), _backend(new_tokenizer)
    sp_pair = None
    if old_proto is not None and new_proto is not None:
        import sentencepiece as spm

        sp_pair = (spm.SentencePieceProcessor(model_proto=old_proto.SerializeToString()),
                   spm.SentencePieceProcessor(model_proto=new_proto.SerializeToString()))
    resegmented = with_new_unk = 0
    for chunk in _chunks(list(texts)):
        old_enc = old_backend.encode_batch(list(chunk), add_special_tokens=False)
        new_enc = new_backend.encode_batch(list(chunk), add_special_tokens=False)
        sp_old = sp_pair[0].encode(list(chunk), out_type=str) if sp_pair else [None] * len(chunk)
        sp_new = sp_pair[1].encode(list(chunk), out_type=str) if sp_pair else [None] * len(chunk)
        for text, o, n, so, sn in zip(chunk, old_enc, new_enc, sp_old, sp_new):
            mapped = [new_to_old[i] for i in n.ids]
            if mapped == o.ids and so == sn:
                continue
            if exact or all(i in kept_old for i in o.ids):
                which = "transformers tokenizer" if mapped != o.ids else "sentencepiece model"
                before, after = (o.tokens, n.tokens) if mapped != o.ids else (so, sn)
                raise SegmentationMismatch(
                    f"the pruned {which} segments a corpus text differently ({text[:60]!r}...): "
                    f"{_first_difference(before, after)}")
            resegmented += 1
            with_new_unk += n.ids.count(new_unk_id) > o.ids.count(old_unk)
    return resegmented, with_new_unk


def _first_difference(before: Sequence[str], after: Sequence[str]) -> str:
    k = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    return f"from piece {k}: {list(before[k:k + 6])} before, {list(after[k:k + 6])} after"


def prune_model_and_tokenizer(
    model,
    tokenizer,
    texts: Sequence[str],
    keep_top: int | None = None,
    min_count: int = 1,
    keep_sentinels: int = 0,
    *,
    pad_to_multiple_of: int = 1,
    min_coverage: float = 0.9,
    sp_model=None,
):
    """Prune ``model`` (in place) and ``tokenizer`` to the vocabulary ``texts`` need; no files written.

    The training loop's entry point (``--prune_vocabulary``); :func:`prune_export` wraps it for exports.
    The model is changed only after the pruned tokenizer passed the segmentation check, so on an error it
    is left as it was.

    Args:
        model: a T5/mT5 ``...ForConditionalGeneration`` (tied or untied ``lm_head``).
        tokenizer: its ``T5Tokenizer``.
        texts: the corpus (articles and titles).
        keep_top, min_count, keep_sentinels, min_coverage, sp_model: see :func:`plan_pruning`.
        pad_to_multiple_of: round the row count up (see :func:`slice_vocabulary`); 1 = no padding rows,
            the pruned model then equals the original restricted to the kept tokens exactly.

    Returns:
        ``(model, tokenizer, info)``: the same model object with ``[kept_rows, d_model]`` embeddings and
        ``lm_head``, the new tokenizer, and a :class:`PruneInfo` (``info.new_to_old`` maps new ids to the
        original ids; ``info.sentencepiece_model`` is the pruned ``spiece.model``; pass it as ``sp_model``
        to prune the in-memory tokenizer again).

    Raises:
        PruneError: see :func:`plan_pruning`; also a non-T5 model or a model with fewer rows than the
            tokenizer has tokens.
    """
    check_model(model)
    if pad_to_multiple_of < 1:
        raise PruneError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    old_rows = model.get_input_embeddings().weight.shape[0]
    if old_rows < len(tokenizer):
        raise PruneError(f"the model has {old_rows} embedding rows but the tokenizer {len(tokenizer)} tokens: "
                         "they do not belong together")
    plan = plan_pruning(tokenizer, texts, keep_top=keep_top, min_count=min_count, keep_sentinels=keep_sentinels,
                        min_coverage=min_coverage, required_ids=referenced_token_ids(model), sp_model=sp_model)
    old_to_new = {old: new for new, old in enumerate(plan.new_to_old)}
    before = count_parameters(model)[0]
    tied = lm_head_is_tied(model)
    remap_config_ids(model, old_to_new)
    rows = slice_vocabulary(model, plan.new_to_old, pad_to_multiple_of, pad_row=tokenizer.pad_token_id)
    info = plan.info
    info.original_rows, info.kept_rows, info.pad_to_multiple_of = old_rows, rows, pad_to_multiple_of
    info.lm_head_tied, info.parameters_before, info.parameters_after = tied, before, count_parameters(model)[0]
    logger.info("pruned the vocabulary to %d of %d pieces (+%d sentinels): %d rows, %s -> %s parameters",
                info.kept_pieces, info.original_pieces, keep_sentinels, rows, f"{before:,}",
                f"{info.parameters_after:,}")
    return model, plan.tokenizer, info


# ----------------------------------------------------------------------------------------------- exports

def check_source(model_name_or_path: str) -> Path | None:
    """Check a source model before anything is loaded: a local directory must hold a ``config.json`` of a
    T5/mT5 model; a hub name is checked through ``AutoConfig``. Returns the local directory, else None.

    Raises:
        PruneError: missing directory or config, unreadable config, not T5/mT5.
    """
    path = Path(model_name_or_path)
    looks_local = path.exists() or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise PruneError(f"{model_name_or_path}: model directory not found" if not path.exists()
                             else f"{model_name_or_path}: not a directory")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise PruneError(f"{config_file}: not found; expected a save_pretrained export (config.json, weights, "
                             "tokenizer)")
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise PruneError(f"{config_file}: not a valid model config ({err})") from err
        where = str(config_file)
    else:
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(model_name_or_path).model_type
        except (OSError, ValueError) as err:
            raise PruneError(f"{model_name_or_path}: cannot load the model config: {err}") from err
        where = model_name_or_path
    if model_type not in T5_FAMILY:
        raise PruneError(f"{where}: model type {model_type!r} is not supported; vocabulary pruning handles "
                         f"{'/'.join(T5_FAMILY)} models (a sentencepiece unigram vocabulary with T5's layout)")
    return path if looks_local else None


def load_source(model_name_or_path: str):
    """``(model, tokenizer, sentencepiece ModelProto)`` of a T5/mT5 export or hub model (``spiece.model``
    from the directory when present, else see :func:`sentencepiece_model_from_tokenizer`).

    Raises:
        PruneError: see :func:`check_source`; the model or tokenizer cannot be loaded.
    """
    from transformers import AutoModelForSeq2SeqLM

    source_dir = check_source(model_name_or_path)
    try:
        tokenizer = get_tokenizer(model_name_or_path)
    except Exception as err:  # noqa: BLE001 - transformers/sentencepiece raise many types
        raise PruneError(f"{model_name_or_path}: cannot load the tokenizer: {err}") from err
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)
    except Exception as err:  # noqa: BLE001
        raise PruneError(f"{model_name_or_path}: cannot load the model: {err}") from err
    spiece = source_dir / "spiece.model" if source_dir is not None else None
    proto = parse_sentencepiece_model(spiece) if spiece is not None and spiece.is_file() else \
        sentencepiece_model_from_tokenizer(tokenizer)
    return model.eval(), tokenizer, proto


def _finish_info(info: PruneInfo, *, old_rows: int, rows: int, pad_to_multiple_of: int, tied: bool, before: int,
                 after: int, files: list[dict[str, Any]]) -> PruneInfo:
    info.original_rows, info.kept_rows, info.pad_to_multiple_of = old_rows, rows, pad_to_multiple_of
    info.lm_head_tied, info.parameters_before, info.parameters_after = tied, before, after
    info.corpus_files = files
    return info


def prune_export(
    model_name_or_path: str,
    corpus: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None,
    *,
    text_columns: Sequence[str] = ("maintext", "title"),
    keep_top: int | None = None,
    min_count: int = 1,
    keep_sentinels: int = 0,
    pad_to_multiple_of: int = 1,
    min_coverage: float = 0.9,
    dry_run: bool = False,
    overwrite: bool = False,
) -> PruneInfo:
    """Prune a model to ``corpus`` and write a ``save_pretrained`` export to ``output_dir``.

    The export holds the model (``config.json``, weights, ``generation_config.json``), the tokenizer
    (``tokenizer.json``, ``tokenizer_config.json`` and the pruned ``spiece.model``), ``prune_info.json``
    and every other top-level file of the source directory unchanged (``title_config.json``...; converted
    CTranslate2 directories are not copied: they belong to the old vocabulary). It is written to a
    temporary sibling directory and renamed into place. With ``dry_run`` nothing is written.

    Raises:
        PruneError, data_io.DataError: bad arguments, source, corpus (see :func:`read_corpus`,
            :func:`plan_pruning`); an existing non-empty ``output_dir`` without ``overwrite``.
    """
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and out.exists() and out.resolve() == Path(model_name_or_path).resolve():
        raise PruneError(f"{out}: is the source model directory; write the pruned model elsewhere")
    if not dry_run:
        if out is None:
            raise PruneError("--output_dir is required (or --dry_run)")
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise PruneError(f"{out}: exists and is not empty; give another --output_dir or --overwrite")
    if not corpus:
        raise PruneError("give at least one --corpus file")
    if (Path(model_name_or_path) / PROMPT_ADAPTER_DIR).is_dir():
        raise PruneError(f"{model_name_or_path}: a prompt-tuned export (a soft prompt in {PROMPT_ADAPTER_DIR}/) "
                         "cannot be pruned here; prune the pretrained model before prompt tuning (train_decoder.py "
                         "--prune_vocabulary --peft_method prompt_tuning)")
    if pad_to_multiple_of < 1:
        raise PruneError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    source_dir = check_source(str(model_name_or_path))
    texts, files = read_corpus(corpus, text_columns)
    logger.info("corpus: %d texts from %d file(s)", len(texts), len(files))
    model, tokenizer, proto = load_source(str(model_name_or_path))
    old_rows = model.get_input_embeddings().weight.shape[0]
    tied, before = lm_head_is_tied(model), count_parameters(model)[0]
    options = dict(keep_top=keep_top, min_count=min_count, keep_sentinels=keep_sentinels, min_coverage=min_coverage,
                   sp_model=proto)
    if dry_run:
        check_model(model)
        plan = plan_pruning(tokenizer, texts, required_ids=referenced_token_ids(model), **options)
        rows = len(plan.new_to_old)
        rows = (rows + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of
        after = projected_parameters(before, old_rows, rows, model.config.d_model, tied)
        return _finish_info(plan.info, old_rows=old_rows, rows=rows, pad_to_multiple_of=pad_to_multiple_of,
                            tied=tied, before=before, after=after, files=files)
    model, pruned_tokenizer, info = prune_model_and_tokenizer(model, tokenizer, texts,
                                                              pad_to_multiple_of=pad_to_multiple_of, **options)
    _finish_info(info, old_rows=old_rows, rows=info.kept_rows, pad_to_multiple_of=pad_to_multiple_of, tied=tied,
                 before=before, after=info.parameters_after, files=files)
    info.source = str(model_name_or_path)
    write_export(model, pruned_tokenizer, info, out, source_dir, overwrite=overwrite)
    return info


def write_export(model, tokenizer, info: PruneInfo, output_dir: Path, source_dir: Path | None,
                 overwrite: bool = False) -> None:
    """Write the pruned export atomically (temporary sibling directory, then rename)."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / "spiece.model").write_bytes(info.sentencepiece_model)
        skipped = []
        for path in sorted(source_dir.iterdir()) if source_dir is not None else []:
            if path.name in REWRITTEN_FILES or path.name.startswith(WEIGHT_SHARD_PREFIXES):
                continue
            if path.is_file():
                shutil.copy2(path, staging / path.name)
            else:
                skipped.append(path.name)
        if skipped:
            logger.info("not copied from %s (directories, e.g. CTranslate2 conversions of the old vocabulary): %s",
                        source_dir, ", ".join(skipped))
        (staging / PRUNE_INFO).write_text(json.dumps(info.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        if output_dir.exists() and not overwrite and (not output_dir.is_dir() or any(output_dir.iterdir())):
            raise PruneError(f"{output_dir}: exists and is not empty; give --overwrite")
        swap_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s", output_dir)


def summary(info: PruneInfo) -> str:
    """The human-readable report printed by the command (and by ``--dry_run``)."""
    saved = 1 - info.parameters_after / info.parameters_before if info.parameters_before else 0.0
    return "\n".join([
        f"kept pieces: {info.kept_pieces:,} of {info.original_pieces:,} sentencepiece pieces "
        f"(+{info.kept_sentinels} sentinels = {info.kept_vocab:,} tokens, was {info.original_vocab:,}); "
        f"embedding rows {info.original_rows:,} -> {info.kept_rows:,}",
        "kept by reason: " + ", ".join(f"{k} {v:,}" for k, v in info.kept_by_reason.items()),
        f"corpus: {info.num_texts:,} texts from {len(info.corpus_files)} file(s), {info.num_tokens:,} tokens, "
        f"{info.num_chars:,} characters",
        f"coverage: {info.token_coverage:.2%} of corpus tokens are kept pieces ({info.unk_token_share:.2%} <unk>); "
        f"{info.distinct_pieces_seen:,} distinct pieces seen; {info.char_fallback_share:.2%} of characters have a "
        f"single-char fallback; {info.char_coverage:.2%} of characters encoded without <unk>",
        f"texts segmented differently: {info.texts_resegmented:,} ({info.texts_with_new_unk:,} with new <unk>)",
        f"parameters: {info.parameters_before:,} -> {info.parameters_after:,} ({saved:.1%} fewer; lm_head "
        f"{'tied' if info.lm_head_tied else 'untied'})",
    ])


# ----------------------------------------------------------------------------------------------- command

@dataclass
class PruneArguments:
    model_name_or_path: str = field(
        metadata={"help": "Source model: a save_pretrained export of a T5/mT5 model or a hub name (google/mt5-small)."})
    corpus: list[str] = field(
        default_factory=list,
        metadata={"help": "Corpus files (repeatable): JSON lines (.jsonl/.json, --text_columns of each record) or "
                          "plain text (one text per line).", "action": "extend"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where to write the pruned export."})
    keep_top: Optional[int] = field(
        default=None, metadata={"help": "Keep only the N most frequent corpus pieces (specials and the character "
                                        "fallback are always kept)."})
    min_count: int = field(default=1, metadata={"help": "Keep only corpus pieces seen at least C times."})
    keep_sentinels: int = field(default=0, metadata={"help": "Keep <extra_id_0> .. <extra_id_{N-1}> (span "
                                                             "corruption); titles need none."})
    text_columns: list[str] = field(
        default_factory=lambda: ["maintext", "title"], metadata={"help": "JSON-lines fields that hold text."})
    pad_to_multiple_of: int = field(
        default=1, metadata={"help": "Round the embedding rows up to a multiple of this (8 or 64 suit GPUs); the "
                                     "extra rows copy <pad>'s. 1 = exact (no extra rows)."})
    min_coverage: float = field(
        default=0.9, metadata={"help": "Refuse a corpus when less than this share of its characters is encoded "
                                       "without <unk>."})
    dry_run: bool = field(default=False, metadata={"help": "Print the kept count, coverage and parameters; write "
                                                           "nothing."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})
    log_level: str = field(default="info", metadata={"help": "Logging level: debug, info, warning, error."})


def parse_args(argv: Sequence[str] | None = None) -> PruneArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PruneArguments, description=__doc__.split("\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Exit status: 0 done; 2 bad arguments, source, corpus or output directory (nothing
    written); 1 any other failure."""

    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.INFO))
    try:
        info = prune_export(args.model_name_or_path, args.corpus, args.output_dir, text_columns=args.text_columns,
                            keep_top=args.keep_top, min_count=args.min_count, keep_sentinels=args.keep_sentinels,
                            pad_to_multiple_of=args.pad_to_multiple_of, min_coverage=args.min_coverage,
                            dry_run=args.dry_run, overwrite=args.overwrite)
    except (PruneError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - report and leave no partial export
        logger.debug("traceback", exc_info=True)
        print(f"error: pruning failed: {type(err).__name__}: {err} (--log_level debug shows the traceback)",
              file=sys.stderr)
        return 1
    print(summary(info))
    print("dry run: nothing written" if args.dry_run else f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

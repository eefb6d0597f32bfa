"""Word segmenters for Chinese ROUGE: ``ckip`` (the grading one), ``jieba`` and ``char``.

ROUGE from the ``rouge`` package splits on whitespace, so unsegmented Chinese scores 0. The course
metric segments with CKIP (ckiptagger's ``WS``) and joins the words with spaces. ``jieba`` and ``char``
need no 2 GB model and are for offline development, tests and fast RL rewards; their numbers differ
from the grading ones.

Nothing here runs at import: jieba is imported on first use, ckiptagger (and TensorFlow) only when a
``ckip`` segmenter segments its first text.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

SEGMENTERS = ("ckip", "jieba", "char")
CKIP_REQUIRED_FILES = ("embedding_character/token_list.npy", "embedding_character/vector_list.npy", "model_ws")


class CkipDataMissingError(FileNotFoundError):
    """ckiptagger's model data is not in the data dir; the message says how to get it."""


def default_ckip_dir() -> Path:
    """``$TW_ROUGE_CKIP_DIR``, else ``$XDG_CACHE_HOME/ckiptagger/data`` (``~/.cache`` when unset), ``~`` expanded."""
    explicit = os.environ.get("TW_ROUGE_CKIP_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "ckiptagger" / "data"


def default_jieba_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tw_rouge/jieba`` (``~/.cache`` when unset), ``~`` expanded."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tw_rouge" / "jieba"


def missing_ckip_files(data_dir: str | os.PathLike) -> list[str]:
    """The required ckiptagger data files (relative names) that ``data_dir`` lacks."""
    root = Path(data_dir)
    return [name for name in CKIP_REQUIRED_FILES if not (root / name).exists()]


class Segmenter:
    """Base class: batched segmentation with a per-text LRU cache.

    ``segment(texts)`` segments only the texts it has not seen (one batched call), so scoring the
    same references at every evaluation or RL step costs one segmentation per new text.
    """

    name = "base"

    def __init__(self, cache_size: int = 500_000):
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[str]] = OrderedDict()

    def segment(self, texts: Sequence[str]) -> list[list[str]]:
        """Segment each text into words. Returns one token list per input text, in input order."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for text, tokens in zip(todo, self._segment_batch(todo)):
                self._cache[text] = list(tokens)
        out = []
        for text in texts:
            tokens = self._cache[text]
            self._cache.move_to_end(text)
            out.append(tokens)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def join(self, texts: Sequence[str]) -> list[str]:
        """Segment and join the words with single spaces (the form ``rouge.Rouge`` scores)."""
        return [" ".join(tokens) for tokens in self.segment(texts)]

    def _segment_batch(self, texts: list[str]) -> list[list[str]]:
        raise NotImplementedError


class CharSegmenter(Segmenter):
    """Every non-whitespace character is a token."""

    name = "char"

    def _segment_batch(self, texts):
        return [[ch for ch in text if not ch.isspace()] for text in texts]


class JiebaSegmenter(Segmenter):
    """``jieba.lcut(text)``: accurate mode, HMM on (Sun Junyi's jieba, PyPI ``jieba``), every token as
    jieba returns it (whitespace tokens too, as ckiptagger's ``WS`` does).

    jieba caches its dictionary with ``marshal`` in a file it later trusts; by default that file lives in
    the world-writable system temp directory. Here it goes to ``cache_dir`` (default
    ``$XDG_CACHE_HOME/tw_rouge/jieba``, ``~/.cache`` when unset), created with mode 0700.
    """

    name = "jieba"

    def __init__(self, cache_size: int = 500_000, cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_jieba_cache_dir()
        self._jieba = None

    def _segment_batch(self, texts):
        if self._jieba is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            jieba.dt.tmp_dir = str(self.cache_dir)  # before the dictionary is loaded (on the first lcut)
            self._jieba = jieba
        return [self._jieba.lcut(text) for text in texts]


class CkipSegmenter(Segmenter):
    """CKIP word segmentation (ckiptagger ``WS``), the course's grading segmenter.

    The ``WS`` model (TensorFlow) is built lazily on the first call, once per segmenter, on the GPU
    when one is visible. TensorFlow is told to grow its GPU memory as needed
    (``TF_FORCE_GPU_ALLOW_GROWTH=true``, set before TensorFlow is imported): by default its session would
    reserve nearly all free GPU memory inside the training process, and the next training step would run
    out of memory.

    Raises (on first use):
        CkipDataMissingError: the data dir lacks ckiptagger's model files; the message names the dir
            and the command that downloads them.
        ImportError: ckiptagger is not installed.
    """

    name = "ckip"

    def __init__(self, data_dir: str | os.PathLike | None = None, cache_size: int = 500_000, batch_size: int = 256):
        super().__init__(cache_size)
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_ckip_dir()
        self.batch_size = batch_size
        self._ws = None

    def check_data(self) -> None:
        """Raise :class:`CkipDataMissingError` if the data dir is incomplete."""
        missing = missing_ckip_files(self.data_dir)
        if missing:
            raise CkipDataMissingError(
                f"ckiptagger data not found in {self.data_dir} (missing: {', '.join(missing)}). "
                f"Download it (about 2 GB) with:\n    python -m tw_rouge download --dir {self.data_dir}\n"
                "or point TW_ROUGE_CKIP_DIR (or XDG_CACHE_HOME) at an existing copy. For offline "
                "development use the 'jieba' or 'char' segmenter (TW_ROUGE_SEGMENTER=jieba); only 'ckip' "
                "gives the course's grading numbers."
            )

    def _load(self):
        self.check_data()
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # read by TensorFlow when it starts
        from ckiptagger import WS

        self._ws = WS(str(self.data_dir), disable_cuda=not _cuda_available())

    def _segment_batch(self, texts):
        if self._ws is None:
            self._load()
        out: list[list[str]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._ws(texts[start : start + self.batch_size]))
        return out


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


_SEGMENTER_CACHE: dict[tuple, Segmenter] = {}


def get_segmenter(segmenter: str | Segmenter | None = None, ckip_dir: str | os.PathLike | None = None) -> Segmenter:
    """Resolve a segmenter: an instance is returned as is; a name is looked up, else
    ``$TW_ROUGE_SEGMENTER``, else ``ckip``. One shared instance per (name, data dir), so the per-text
    cache and the CKIP model are reused across calls.

    Raises:
        ValueError: unknown segmenter name.
    """
    if isinstance(segmenter, Segmenter):
        return segmenter
    name = segmenter or os.environ.get("TW_ROUGE_SEGMENTER") or "ckip"
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    key = (name, str(Path(ckip_dir).expanduser()) if (name == "ckip" and ckip_dir) else None)
    if name == "ckip" and key[1] is None:
        key = (name, str(default_ckip_dir()))
    if key not in _SEGMENTER_CACHE:
        if name == "char":
            _SEGMENTER_CACHE[key] = CharSegmenter()
        elif name == "jieba":
            _SEGMENTER_CACHE[key] = JiebaSegmenter()
        else:
            _SEGMENTER_CACHE[key] = CkipSegmenter(key[1])
    return _SEGMENTER_CACHE[key]

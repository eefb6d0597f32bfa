"""tw_rouge: the course's Chinese ROUGE (CKIP segmentation + the ``rouge`` package), usable offline.

    from tw_rouge import get_rouge
    get_rouge("我是人", "我是一個人")                      # CKIP, as graded (needs ckiptagger data)
    get_rouge(preds, refs, segmenter="jieba")             # offline

Importing this package downloads nothing, creates no directory and loads no TensorFlow.
"""

from .scoring import METRICS, get_rouge, rouge_f_per_pair
from .segment import (
    SEGMENTERS,
    CharSegmenter,
    CkipDataMissingError,
    CkipSegmenter,
    JiebaSegmenter,
    Segmenter,
    default_ckip_dir,
    get_segmenter,
)

__all__ = [
    "METRICS",
    "SEGMENTERS",
    "CharSegmenter",
    "CkipDataMissingError",
    "CkipSegmenter",
    "JiebaSegmenter",
    "Segmenter",
    "default_ckip_dir",
    "get_rouge",
    "get_segmenter",
    "rouge_f_per_pair",
]

"""Command line: score a submission like the course's ``eval.py``, or download ckiptagger's data.

    python -m tw_rouge -r reference.jsonl -s submission.jsonl [--segmenter ckip|jieba|char] [--per-example F]
    python -m tw_rouge download [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from data_io import DataError, atomic_open, read_jsonl

from .scoring import average_scores, get_rouge
from .segment import SEGMENTERS, CkipDataMissingError, default_ckip_dir, missing_ckip_files


class InputError(ValueError):
    """A reference or submission file that cannot be scored, or an unusable output path."""


def read_titles(path: str) -> dict:
    """``id -> title`` (stripped) from a JSON-lines file (``data_io.read_jsonl``: errors name the file,
    the line and the field; a UTF-8 byte-order mark is accepted).

    Raises:
        InputError: the file is missing or malformed.
    """
    try:
        records = read_jsonl(path, text_column=None, summary_column="title", require_summary=True)
    except DataError as err:
        raise InputError(str(err)) from err
    return {r["id"]: r["title"].strip() for r in records}


def evaluate(reference: str, submission: str, segmenter: str | None, per_example: str | None) -> dict:
    refs, preds = read_titles(reference), read_titles(submission)
    missing = [k for k in refs if k not in preds]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5])
        raise InputError(f"{submission}: {len(missing)} reference id(s) have no prediction, e.g. {shown}")
    keys = list(refs)
    ref_list, pred_list = [refs[k] for k in keys], [preds[k] for k in keys]
    per_pair = get_rouge(pred_list, ref_list, avg=False, segmenter=segmenter)
    if per_example:
        _write_per_example(per_example, keys, per_pair)
    return average_scores(per_pair)


def _write_per_example(path: str, keys: list, per_pair: list) -> None:
    """One JSON line per article, written atomically (``data_io.atomic_open``)."""
    out = Path(path)
    if not out.parent.is_dir():
        raise InputError(f"{path}: output directory {out.parent} does not exist")
    with atomic_open(out, "w") as f:
        for key, scores in zip(keys, per_pair):
            f.write(json.dumps({"id": key, **scores}, ensure_ascii=False) + "\n")


def download(data_dir: Path) -> None:
    """Download ckiptagger's data (about 2 GB) with ckiptagger's own functions into ``data_dir``."""
    if not missing_ckip_files(data_dir):
        print(f"ckiptagger data already present in {data_dir}")
        return
    from ckiptagger import data_utils

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ckiptagger-download-", dir=data_dir.parent))
    try:
        try:
            data_utils.download_data_url(str(staging))
        except Exception as err:  # the primary mirror is sometimes down; ckiptagger ships a second one
            print(f"download_data_url failed ({err}); trying download_data_gdown", file=sys.stderr)
            data_utils.download_data_gdown(str(staging))
        if missing_ckip_files(staging / "data"):
            raise RuntimeError(f"download finished but {staging / 'data'} is incomplete")
        if data_dir.exists():
            shutil.rmtree(data_dir)
        os.replace(staging / "data", data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"ckiptagger data installed in {data_dir}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "download":
        parser = argparse.ArgumentParser(prog="python -m tw_rouge download", description=download.__doc__)
        parser.add_argument("--dir", type=Path, default=None, help=f"data dir (default: {default_ckip_dir()})")
        args = parser.parse_args(argv[1:])
        try:
            download((args.dir or default_ckip_dir()).expanduser())
        except Exception as err:
            print(f"error: could not download ckiptagger data: {err}", file=sys.stderr)
            return 1
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m tw_rouge",
        description="Score a submission against references (the course's eval.py), or "
        "'python -m tw_rouge download [--dir DIR]' to fetch ckiptagger's data.",
    )
    parser.add_argument("-r", "--reference", required=True, help="JSON lines with 'id' and 'title'")
    parser.add_argument("-s", "--submission", required=True, help="JSON lines with 'id' and 'title'")
    parser.add_argument("--segmenter", choices=SEGMENTERS, default=None,
                        help="word segmenter (default: $TW_ROUGE_SEGMENTER, else ckip, the grading one)")
    parser.add_argument("--per-example", default=None, help="also write per-article scores (JSON lines) here")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.reference, args.submission, args.segmenter, args.per_example)
    except (InputError, CkipDataMissingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: score a submission like the course's ``eval.py``, or download ckiptagger's data.

    python -m tw_rouge -r reference.jsonl -s submission.jsonl [--segmenter ckip|jieba|char] [--per-example F]
    python -m tw_rouge download [--dir DIR] [--sha256 HEX]

The scores are those of the course's ``eval.py`` on every input (see ``scoring.course_eval_scores``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from data_io import DataError, atomic_open, check_output_path, read_jsonl

from .scoring import average_scores, course_eval_scores
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
    """The course's ``eval.py``: average ROUGE of the submission's titles against the references, matched by
    id (:func:`tw_rouge.scoring.course_eval_scores`); per-article scores go to ``per_example`` when given.

    Raises:
        InputError: unreadable or malformed files, no references, reference ids missing from the submission,
            an unusable ``per_example`` path (checked before anything is scored).
        ValueError: an unknown segmenter name.
    """
    if per_example:
        try:
            check_output_path(per_example, [reference, submission], create_parents=False)
        except DataError as err:
            raise InputError(f"--per-example {err}") from err
    refs, preds = read_titles(reference), read_titles(submission)
    if not refs:
        raise InputError(f"{reference}: no reference titles in the file")
    missing = [k for k in refs if k not in preds]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5])
        raise InputError(f"{submission}: {len(missing)} reference id(s) have no prediction, e.g. {shown}")
    keys = list(refs)
    per_pair = course_eval_scores([preds[k] for k in keys], [refs[k] for k in keys], segmenter=segmenter)
    if per_example:
        with atomic_open(per_example, "w") as f:
            for key, scores in zip(keys, per_pair):
                f.write(json.dumps({"id": key, **scores}, ensure_ascii=False) + "\n")
    return average_scores(per_pair)


CKIP_DATA_URL = "https://ckip.iis.sinica.edu.tw/data/ckiptagger/data.zip"  # ckiptagger.data_utils' mirrors
CKIP_DATA_GDRIVE = "https://drive.google.com/uc?id=1efHsY16pxK0lBD2gYCgCTnv1Swstq771"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(target: Path) -> str:
    """Download ckiptagger's ``data.zip`` to ``target`` from its first mirror, else its Google Drive copy
    (with gdown, which ckiptagger installs). Returns the URL it came from.

    Raises:
        OSError / RuntimeError: both mirrors failed.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(CKIP_DATA_URL, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        return CKIP_DATA_URL
    except OSError as err:  # the primary mirror is sometimes down; ckiptagger ships a second one
        print(f"{CKIP_DATA_URL} failed ({err}); trying the Google Drive copy", file=sys.stderr)
    import gdown

    if not gdown.download(CKIP_DATA_GDRIVE, str(target), quiet=False):
        raise RuntimeError(f"the download from {CKIP_DATA_GDRIVE} failed")
    return CKIP_DATA_GDRIVE


def download(data_dir: Path, expected_sha256: str | None = None) -> None:
    """Download ckiptagger's data (about 2 GB) into ``data_dir``, verified before it is installed.

    The archive is checked three ways before anything is moved into place: its SHA-256 against
    ``expected_sha256`` when one is given (``--sha256`` or ``$TW_ROUGE_CKIP_SHA256``; its own SHA-256 is
    printed so that a first download can be pinned), every member's CRC (``zipfile.testzip``: truncated or
    corrupted downloads), and the required model files. It is unpacked into a staging directory beside
    ``data_dir`` and renamed into place, so an interrupted or failed download leaves nothing half-installed.

    Raises:
        RuntimeError: a checksum mismatch, a corrupt or incomplete archive.
        OSError: the download failed on both mirrors.
    """
    if not missing_ckip_files(data_dir):
        print(f"ckiptagger data already present in {data_dir}")
        return
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ckiptagger-download-", dir=data_dir.parent))
    try:
        archive = staging / "data.zip"
        source = fetch_archive(archive)
        digest = sha256_of(archive)
        print(f"downloaded {archive.stat().st_size:,} bytes from {source}, sha256 {digest}", file=sys.stderr)
        if expected_sha256 and digest != expected_sha256.lower():
            raise RuntimeError(f"checksum mismatch: expected sha256 {expected_sha256}, got {digest}")
        try:
            with zipfile.ZipFile(archive) as zipped:
                broken = zipped.testzip()
                if broken is not None:
                    raise RuntimeError(f"the archive is corrupt (bad CRC in {broken})")
                zipped.extractall(staging)  # zipfile drops absolute paths and '..' components
        except zipfile.BadZipFile as err:
            raise RuntimeError(f"not a complete zip archive ({err})") from err
        if missing_ckip_files(staging / "data"):
            raise RuntimeError(f"the archive lacks {', '.join(missing_ckip_files(staging / 'data'))}")
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
        parser.add_argument("--sha256", default=os.environ.get("TW_ROUGE_CKIP_SHA256"),
                            help="expected SHA-256 of data.zip (default: $TW_ROUGE_CKIP_SHA256; without one "
                                 "the archive's CRCs and files are still checked)")
        args = parser.parse_args(argv[1:])
        try:
            download((args.dir or default_ckip_dir()).expanduser(), args.sha256)
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
    except (InputError, CkipDataMissingError, ValueError) as err:  # ValueError: unknown $TW_ROUGE_SEGMENTER
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

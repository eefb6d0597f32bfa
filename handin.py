"""The hand-in contract: what ``package_model.py`` writes and ``download.sh``, ``run.sh`` and the grading
rehearsal read.

- **The archive** (``model.tar.gz``): a gzip-compressed tar of one flat export directory (no folders
  inside): weights in safetensors, ``config.json``, ``generation_config.json``, ``title_config.json`` and
  the tokenizer files. Members are sorted by name, with mtime 0, owner 0:0 and mode 0644, and the gzip
  header carries no name or time, so the same export always gives the same bytes (the same sha256).
- **model.lock** (tracked, at the repository root): ``key=value`` lines (``#`` comments) that
  ``download.sh`` reads: ``url``, ``sha256``, ``size`` (bytes), ``unpack_to`` (a path relative to the
  repository root; ``run.sh`` loads the model from there when it exists), plus what was packed
  (``dtype``, ``export``, ``step``, ``generation_preset``, ``weight_bytes``) and, after
  ``package_model.py --reference``, the ROUGE of the packed model (``check_*`` keys).
- **The marker** ``UNPACK_TO/.download-info`` (``sha256=...``, ``size=...``, ``url=...``): written by
  ``download.sh`` last, inside the directory it moves into place; a second run with the same sha256 does
  nothing.
- :func:`check_submission`: what graders need of ``run.sh``'s output.
- :func:`copy_repository`: the files a grader's clone has (tracked and untracked-not-ignored files),
  for the rehearsal.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from data_io import DataError, atomic_open, atomic_write_text, read_jsonl

REPO = Path(__file__).resolve().parent
LOCK_FILE = REPO / "model.lock"
DEFAULT_UNPACK_TO = "models/title-model"
PLACEHOLDER_URL = "PLACEHOLDER-upload-model.tar.gz-and-put-its-download-link-here"
MARKER_FILE = ".download-info"
SPECIAL_TOKENS_RE = re.compile(r"<extra_id_\d+>|</s>|<s>|<pad>|<unk>")
MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # flat names only; download.sh checks the same
LOCK_KEYS = ("url", "sha256", "size", "unpack_to")  # what download.sh reads
NOT_COPIED = (".venv", "outputs", "models", ".git")  # top-level paths a grader's clone never has

LOCK_HEADER = """\
# model.lock: the model that `bash download.sh` fetches (written by `python package_model.py`).
# Upload the archive, put its link in url= (a direct https link, or a Google Drive share link / file id,
# fetched with gdown), commit this file, then rehearse: bash scripts/rehearse_grading.sh INPUT.jsonl
# download.sh reads url, sha256, size and unpack_to; MODEL_URL and MODEL_SHA256 in the environment win.
"""


# ----------------------------------------------------------------------------------------------- model.lock

def read_lock(path: str | os.PathLike = LOCK_FILE) -> dict[str, str]:
    """The ``key=value`` pairs of a lock file (the last of a repeated key wins); ``{}`` when it is absent.

    Raises:
        ValueError: a line that is neither blank, a ``#`` comment nor ``key=value`` (the message names it).
    """
    path = Path(path)
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", key):
            raise ValueError(f"{path}:{lineno}: expected key=value, got {line!r}")
        values[key] = value
    return values


def write_lock(path: str | os.PathLike, values: dict[str, Any], comments: dict[str, str] | None = None) -> Path:
    """Write ``values`` as ``key=value`` lines (in the order given, under :data:`LOCK_HEADER`), atomically.
    ``comments`` puts a ``# ...`` line before a key.

    Raises:
        ValueError: a key or value that does not fit on one ``key=value`` line.
    """
    lines = [LOCK_HEADER]
    for key, value in values.items():
        text = str(value)
        if not re.fullmatch(r"[a-z0-9_]+", key) or "\n" in text or "\r" in text:
            raise ValueError(f"model.lock: cannot write {key}={text!r} on one line")
        if comments and key in comments:
            lines.append(f"# {comments[key]}\n")
        lines.append(f"{key}={text}\n")
    atomic_write_text(path, "".join(lines))
    return Path(path)


def is_placeholder_url(url: str | None) -> bool:
    return not url or url.startswith("PLACEHOLDER")


# ----------------------------------------------------------------------------------------------- archive

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_archive(members: Iterable[tuple[str, str | os.PathLike]], out: str | os.PathLike,
                  compresslevel: int = 6) -> tuple[str, int]:
    """Write ``(name in the archive, file)`` pairs as a deterministic ``.tar.gz`` at ``out``, atomically
    (:func:`data_io.atomic_open`), and return ``(sha256, size in bytes)``.

    Raises:
        ValueError: a member name that is not a flat file name (:data:`MEMBER_NAME_RE`) or is repeated.
    """
    members = sorted((str(name), Path(path)) for name, path in members)
    names = [name for name, _ in members]
    bad = [n for n in names if not MEMBER_NAME_RE.match(n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"archive member names must be unique flat file names, got {bad or names}")
    with atomic_open(out, "wb") as raw:
        # filename="" and mtime=0: no name or time in the gzip header
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, path in members:
                    info = tarfile.TarInfo(name)
                    info.size = path.stat().st_size
                    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
    return sha256_file(out), Path(out).stat().st_size


def read_archive_names(path: str | os.PathLike) -> list[str]:
    """Member names of a ``.tar.gz`` in archive order."""
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


def unpack_archive(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a hand-in archive into ``dest`` (created), refusing anything but flat regular files (as
    ``download.sh`` does)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not MEMBER_NAME_RE.match(member.name):
                raise ValueError(f"{path}: unexpected member {member.name!r} (flat regular files only)")
        tar.extractall(dest, filter="data")
    return dest


def check_segmenter(name: str | None):
    """The tw_rouge segmenter ``name`` (None: ``$TW_ROUGE_SEGMENTER``, else ckip), its data checked.

    Raises:
        ValueError: an unknown name, or ckip without its data (the message says how to get it).
    """
    from tw_rouge import get_segmenter

    try:
        segmenter = get_segmenter(name)
        if hasattr(segmenter, "check_data"):
            segmenter.check_data()
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    return segmenter


# ----------------------------------------------------------------------------------------------- submission

def check_submission(input_file: str | os.PathLike, output_file: str | os.PathLike,
                     max_problems: int = 10) -> list[str]:
    """What graders need of ``run.sh INPUT OUTPUT``: one JSON line per input line, the same ids in the same
    order, each with a non-empty string ``title`` holding no special token (``<extra_id_N>``, ``</s>``,
    ``<pad>``, ``<unk>``) and no line break. Returns the problems found (at most ``max_problems``, each
    naming the line), ``[]`` when the output is good."""
    try:
        inputs = read_jsonl(input_file, text_column=None, require_summary=False)
    except DataError as err:
        return [f"cannot read the input: {err}"]
    if not Path(output_file).exists():
        return [f"{output_file}: run.sh wrote no output file"]
    try:
        outputs = read_jsonl(output_file, text_column=None, summary_column="title", require_summary=True)
    except DataError as err:
        return [f"not valid output: {err}"]
    problems: list[str] = []
    if len(outputs) != len(inputs):
        problems.append(f"{output_file}: {len(outputs)} lines for {len(inputs)} input articles")
    want_ids = [r["id"] for r in inputs]
    got_ids = [r["id"] for r in outputs]
    missing = [i for i in want_ids if i not in set(got_ids)]
    extra = [i for i in got_ids if i not in set(want_ids)]
    if missing:
        problems.append(f"ids missing from the output: {_some(missing)}")
    if extra:
        problems.append(f"ids not in the input: {_some(extra)}")
    if not missing and not extra and got_ids != want_ids:
        line = next(n for n, (g, w) in enumerate(zip(got_ids, want_ids), start=1) if g != w)
        problems.append(f"{output_file}:{line}: id {got_ids[line - 1]!r} where the input has {want_ids[line - 1]!r} "
                        "(ids out of input order)")
    for n, row in enumerate(outputs, start=1):
        title = row["title"]
        if not title.strip():
            problems.append(f"{output_file}:{n}: empty title (id {row['id']!r})")
        elif SPECIAL_TOKENS_RE.search(title):
            problems.append(f"{output_file}:{n}: special token {SPECIAL_TOKENS_RE.search(title).group()!r} in the "
                            f"title (id {row['id']!r})")
        elif "\n" in title or "\r" in title:
            problems.append(f"{output_file}:{n}: line break in the title (id {row['id']!r})")
    return problems[:max_problems] + ([f"... and {len(problems) - max_problems} more"]
                                      if len(problems) > max_problems else [])


def _some(values: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f" (and {len(values) - n} more)" if len(values) > n else "")


# ----------------------------------------------------------------------------------------------- repository copy

def repository_files(root: str | os.PathLike = REPO) -> list[str]:
    """Paths (relative to ``root``) a grader's clone would have: tracked files plus untracked files git does
    not ignore (``git ls-files -co --exclude-standard``), without :data:`NOT_COPIED`. Without git (an
    unpacked tarball): every file except :data:`NOT_COPIED` and caches."""
    root = Path(root)
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                                check=True, capture_output=True).stdout.decode("utf-8").split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(root)) for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts]
    keep = []
    for rel in sorted(set(filter(None, listed))):
        if Path(rel).parts[0] in NOT_COPIED:
            continue
        if (root / rel).is_file() or (root / rel).is_symlink():  # a tracked file deleted in the work tree is not
            keep.append(rel)
    return keep


def copy_repository(dest: str | os.PathLike, root: str | os.PathLike = REPO) -> Path:
    """Copy :func:`repository_files` of ``root`` into ``dest`` (created; must not hold files), keeping
    permission bits and symlinks."""
    root, dest = Path(root), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest}: not empty")
    for rel in repository_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
    return dest


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000, as the course states its 4 GB limit)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")

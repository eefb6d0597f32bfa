"""Reading and writing the course's JSON-lines files (``maintext`` -> ``title``, plus ``id``).

Every error names the file, the 1-based line number and the field, so a user can open the file at the
right place. Writes are atomic (temp file in the same directory, then ``os.replace``): an existing good
file is never left half-written, and a write never replaces one of the input files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence


class DataError(ValueError):
    """Bad input data. ``str(err)`` reads ``FILE:LINE: message`` (LINE omitted when not line-specific)."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def read_jsonl(
    path: str | os.PathLike,
    *,
    text_column: str | None = "maintext",
    summary_column: str = "title",
    require_summary: bool = True,
    allow_empty_text: bool = False,
    require_id: bool = True,
) -> list[dict[str, Any]]:
    """Read a JSON-lines file (``.jsonl``, or ``.json`` holding one object per line), UTF-8.

    Args:
        path: the file.
        text_column: field holding the source article (must be a string); None: not checked (files of
            titles only, such as submissions).
        summary_column: field holding the reference title.
        require_summary: training/evaluation data need a string ``summary_column``; prediction input
            does not (when present it must still be a string).
        allow_empty_text: prediction input may have an empty ``text_column``; training data may not.
        require_id: records need a unique string or integer ``id`` (the course's files); False for logs
            such as ``metrics.jsonl`` (ids are then not checked).

    Returns:
        The records in file order (blank lines skipped). ``id`` values are kept as they are in the
        file (string or number).

    Raises:
        DataError: missing or unreadable file, bad UTF-8, malformed JSON, a line that is not an object,
            a missing/non-string text or summary field, a missing or duplicate ``id``. The message names
            the file, the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from err
    if raw.startswith(b"\xef\xbb\xbf"):  # tolerate a UTF-8 byte-order mark (some course samples have one)
        raw = raw[3:]
    records: list[dict[str, Any]] = []
    seen_ids: dict[Any, int] = {}
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, f"not valid UTF-8 (byte {err.start}): save the file as UTF-8", lineno) from err
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"malformed JSON at column {err.colno}: {err.msg}", lineno) from err
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}", lineno)
        if require_id:
            _check_id(record, seen_ids, path, lineno)
        if text_column is not None:
            _check_string_field(record, text_column, path, lineno, required=True, allow_empty=allow_empty_text)
        _check_string_field(record, summary_column, path, lineno, required=require_summary, allow_empty=True)
        records.append(record)
    return records


def split_by_id(records: Sequence[dict], percentage: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, validation)``: hold ``percentage`` % of the distinct ``id`` values out, with every record of
    a held-out id (records sharing an id stay on one side). Which ids: the smallest
    ``sha256(seed, id)``, so the split depends only on the seed and the set of ids (not on file order),
    and each side keeps the file order. The validation side gets ``round(percentage / 100 x ids)`` ids,
    at least one and at most all but one.

    Raises:
        ValueError: ``percentage`` outside (0, 100), or fewer than two distinct ids.
    """
    if not 0 < percentage < 100:
        raise ValueError(f"the validation percentage must be in (0, 100), got {percentage}")
    ids = list(dict.fromkeys(json.dumps(r["id"]) for r in records))  # 1 and "1" are different ids
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} distinct id(s): a split needs at least two")
    held = min(max(math.floor(percentage / 100 * len(ids) + 0.5), 1), len(ids) - 1)
    key = lambda i: hashlib.sha256(f"{seed}\0{i}".encode()).hexdigest()  # noqa: E731
    validation_ids = set(sorted(ids, key=key)[:held])
    validation = [r for r in records if json.dumps(r["id"]) in validation_ids]
    return [r for r in records if json.dumps(r["id"]) not in validation_ids], validation


def _check_id(record: dict, seen_ids: dict[Any, int], path: Path, lineno: int) -> None:
    if "id" not in record:
        raise DataError(path, "missing field 'id'", lineno)
    rid = record["id"]
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(path, f"field 'id' must be a string or integer, got {type(rid).__name__}", lineno)
    if isinstance(rid, str):
        _check_encodable(rid, "id", path, lineno)
    if rid in seen_ids:
        raise DataError(path, f"duplicate id {rid!r} (first seen on line {seen_ids[rid]})", lineno)
    seen_ids[rid] = lineno


def _check_string_field(record: dict, field: str, path: Path, lineno: int, *, required: bool, allow_empty: bool):
    if field not in record or record[field] is None:
        if required:
            raise DataError(path, f"missing field {field!r}", lineno)
        return
    value = record[field]
    if not isinstance(value, str):
        raise DataError(path, f"field {field!r} must be a string, got {type(value).__name__}", lineno)
    _check_encodable(value, field, path, lineno)
    if not allow_empty and not value.strip():
        raise DataError(path, f"field {field!r} is empty", lineno)


def _check_encodable(value: str, field: str, path: Path, lineno: int) -> None:
    """JSON allows ``"\\ud800"`` (a lone surrogate), which no UTF-8 text can hold: refuse it here, where the
    line is known, instead of failing later in a tokenizer or when the output is written."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(path, f"field {field!r} holds an unpaired surrogate ({value[err.start:err.end]!r} at "
                        f"character {err.start}), which is not valid Unicode text", lineno) from err


def write_jsonl_atomic(
    path: str | os.PathLike,
    records: Iterable[dict[str, Any]],
    *,
    protected: Sequence[str | os.PathLike] = (),
) -> None:
    """Write ``records`` as JSON lines (``ensure_ascii=False``) to ``path`` atomically.

    The records go to a temporary file in the same directory, which is fsynced and renamed over
    ``path`` only when complete, so an existing file is replaced whole or not at all.

    Raises:
        DataError: ``path`` is one of ``protected`` (for example the input file), or its directory
            does not exist. (:func:`check_output_path` checks more, before the work that makes the records.)
    """
    path = Path(path)
    for other in protected:
        if same_file(path, other):
            raise DataError(path, f"refusing to overwrite the input file {other}")
    if not path.parent.resolve().is_dir():
        raise DataError(path, f"output directory {path.parent} does not exist")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, lines)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (another spelling, a symlink or a hard link)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | os.PathLike, protected: Sequence[str | os.PathLike] = (), *,
                      create_parents: bool = True) -> None:
    """Check, before any expensive work, that ``path`` can be written as an output file.

    Refused: one of ``protected`` (the inputs) under any spelling, an existing directory or a path that
    ends with a separator, a parent that is a file, and a directory where no file can be created (read-only,
    no permission: probed by creating and removing a temporary file, so it holds for root and read-only
    file systems too). With ``create_parents`` the missing parent directories may be created later, and the
    nearest existing one is probed; without it the parent must exist. An existing special file (``/dev/null``,
    a FIFO, a terminal) is accepted: :func:`atomic_open` writes through it.

    Raises:
        DataError: naming ``path`` and the reason.
    """
    text = os.fspath(path)
    path = Path(path)
    for other in protected:
        if same_file(path, other):
            raise DataError(path, f"refusing to overwrite the input file {other}; choose another output path")
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise DataError(path, "is a directory; give a file path")
    if path.exists() and not path.is_file():
        if not os.access(path, os.W_OK):
            raise DataError(path, "not writable")
        return
    parent = path.parent
    while not parent.exists() and create_parents and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise DataError(path, f"output directory {path.parent} does not exist")
    if not parent.is_dir():
        raise DataError(path, f"cannot create it: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(path, f"cannot write in {parent}: {err.strerror or err}") from err


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` ``"w"``: UTF-8 text, ``"wb"``: bytes);
    when the block completes, flush, fsync and ``os.replace`` it over ``path``.

    The result has the permissions a plain ``open(path, "w")`` would give it (an existing file keeps its
    mode), not the ``0600`` of ``tempfile.mkstemp``. On any error, or an interruption, the temporary file is
    removed and an existing ``path`` is left untouched. An existing path that is not a regular file (a
    device such as ``/dev/null``, a FIFO, ``/dev/stdout``) is written through in place: renaming a file
    over it would replace the device node itself.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        OSError: the directory does not exist or is not writable.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only, with mode 'w' or 'wb' (got {mode!r})")
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        with open(path, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
        return
    file_mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            os.fchmod(f.fileno(), file_mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _target_mode(path: Path) -> int:
    """Permission bits for ``path``: those of the existing file, else ``0o666`` minus the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read the umask is to set it and restore it
        os.umask(umask)
        return 0o666 & ~umask

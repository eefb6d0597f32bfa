"""data_io: reading JSON-lines data with errors that name file, line and field; atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import data_file, read_records
from data_io import DataError, atomic_write_text, read_jsonl, write_jsonl_atomic


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _rec(rid, maintext="文章內容。", title="標題", **extra) -> str:
    obj = {"id": rid, "maintext": maintext, "title": title, **extra}
    return json.dumps({k: v for k, v in obj.items() if v is not _MISSING}, ensure_ascii=False)


_MISSING = object()


def _read_error(path: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        read_jsonl(path, **kwargs)
    return info.value


# ---------------------------------------------------------------- reading: good files


@pytest.mark.parametrize("name", ["lcsts_val.jsonl", "csl_abstract_title.jsonl"])
def test_reads_real_files_like_json(name):
    path = data_file(name)
    records = read_jsonl(path)
    assert records == read_records(name)  # same records, same order as a plain json.loads per line
    assert len({r["id"] for r in records}) == len(records)


def test_reads_the_homework_schema_with_a_byte_order_mark(tmp_path):
    """The course files' fields (``date_publish``, ``source_domain``, ``split``, numeric-string ids; the
    samples start with a UTF-8 BOM): extra fields are kept, the BOM is not part of the first key."""
    rows = [{"date_publish": "2015-03-02 00:00:00", "title": "榜首進台大醫科卻休學", "source_domain": "udn.com",
             "maintext": "從小就很會念書的李同學，考上台大醫科。", "split": "dev", "id": "21710"},
            {"date_publish": "2015-03-02 00:00:00", "title": "台北今天下雨", "source_domain": "udn.com",
             "maintext": "中央氣象局表示，台北今天下雨。", "split": "dev", "id": "21711"}]
    path = tmp_path / "public.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    assert read_jsonl(path) == rows


def test_blank_lines_skipped_and_line_numbers_are_physical(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [_rec("a"), "", "   ", _rec("b"), "\t", "{bad"])
    err = _read_error(path)
    assert err.line == 6 and str(err).startswith(f"{path}:6: ")
    path = _write_lines(tmp_path / "ok.jsonl", [_rec("a"), "", "   ", _rec("b"), ""])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_json_extension_crlf_bom_and_unicode_line_separators(tmp_path):
    # A ".json" file holding JSON lines, Windows line ends, a UTF-8 BOM, and a raw U+2028 inside a
    # string (str.splitlines() would cut the record there; JSON allows it unescaped).
    text = "\ufeff" + _rec("x", maintext="第一段\u2028第二段") + "\r\n" + _rec(7) + "\r\n"
    path = tmp_path / "data.json"
    path.write_bytes(text.encode("utf-8"))
    records = read_jsonl(path)
    assert [r["id"] for r in records] == ["x", 7]  # ids kept as in the file (string or number)
    assert records[0]["maintext"] == "第一段\u2028第二段"


def test_title_optional_for_prediction_input(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [_rec("a", title=_MISSING), _rec("b")])
    records = read_jsonl(path, require_summary=False)
    assert [("title" in r) for r in records] == [False, True]
    err = _read_error(path)  # training/evaluation data need it
    assert err.line == 1 and "'title'" in str(err) and "missing" in str(err)


def test_empty_maintext_allowed_only_for_prediction(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [_rec("a"), _rec("b", maintext=""), _rec("c", maintext="  ")])
    texts = [r["maintext"] for r in read_jsonl(path, require_summary=False, allow_empty_text=True)]
    assert texts == ["文章內容。", "", "  "]
    err = _read_error(path, require_summary=False)
    assert err.line == 2 and "'maintext'" in str(err) and "empty" in str(err)


def test_custom_columns(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps({"id": 1, "text": "內容", "summary": "摘要"})])
    assert read_jsonl(path, text_column="text", summary_column="summary")[0]["summary"] == "摘要"
    err = _read_error(path)
    assert "'maintext'" in str(err)


# ---------------------------------------------------------------- reading: every error case


@pytest.mark.parametrize(
    "bad_line, line_no, fragments",
    [
        ('{"id": "b", "maintext": "x", "title": "y"', 2, ["malformed JSON"]),
        ('["b", "x", "y"]', 2, ["JSON object", "list"]),
        ('"just a string"', 2, ["JSON object", "str"]),
        (_rec("b", maintext=_MISSING), 2, ["missing", "'maintext'"]),
        (_rec("b", maintext=None), 2, ["missing", "'maintext'"]),
        (_rec("b", maintext=123), 2, ["'maintext'", "must be a string", "int"]),
        (_rec("b", maintext=["段落"]), 2, ["'maintext'", "must be a string", "list"]),
        (_rec("b", maintext="   "), 2, ["'maintext'", "empty"]),
        (_rec("b", title=5), 2, ["'title'", "must be a string", "int"]),
        (json.dumps({"maintext": "x", "title": "y"}), 2, ["missing", "'id'"]),
        (_rec(1.5), 2, ["'id'", "float"]),
        (_rec(True), 2, ["'id'", "bool"]),
        (_rec("a"), 2, ["duplicate id 'a'", "line 1"]),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, bad_line, line_no, fragments):
    path = _write_lines(tmp_path / "train.jsonl", [_rec("a"), bad_line, _rec("c")])
    err = _read_error(path)
    assert isinstance(err, ValueError)
    assert err.path == str(path) and err.line == line_no
    assert str(err).startswith(f"{path}:{line_no}: ")
    for fragment in fragments:
        assert fragment in str(err)


def test_non_string_title_is_an_error_even_when_optional(tmp_path):
    path = _write_lines(tmp_path / "p.jsonl", [_rec("a", title=["x"])])
    err = _read_error(path, require_summary=False)
    assert err.line == 1 and "'title'" in str(err) and "list" in str(err)


def test_duplicate_ids_distinguish_string_and_number(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [_rec("1"), _rec(1), _rec(2), _rec(2)])
    err = _read_error(path)
    assert err.line == 4 and "duplicate id 2" in str(err) and "line 3" in str(err)


def test_logs_without_ids_read_only_when_ids_are_not_required(tmp_path):
    from plotting import read_metrics

    rows = [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.0}, {"step": 2, "eval/rouge-1": 3.0},
            {"step": 2, "train/loss": 1.5}]  # step 2's loss logged twice (a resumed run): the last one counts
    path = _write_lines(tmp_path / "metrics.jsonl", [json.dumps(r) for r in rows])
    assert "missing field 'id'" in str(_read_error(path, text_column=None, require_summary=False))
    assert read_jsonl(path, text_column=None, require_summary=False, require_id=False) == rows
    assert read_metrics(path) == [rows[0], rows[3], rows[2]]
    _write_lines(path, [json.dumps(rows[0]), "{not json"])
    err = _read_error(path, text_column=None, require_summary=False, require_id=False)
    assert err.line == 2 and "malformed JSON" in str(err)


def test_bad_encoding_names_the_line(tmp_path):
    path = tmp_path / "big5.jsonl"
    good = _rec("a").encode("utf-8") + b"\n"
    big5 = _rec("b", maintext="中文標題").encode("big5") + b"\n"  # a file saved in Big5, not UTF-8
    path.write_bytes(good + b"\n" + big5)
    err = _read_error(path)
    assert err.line == 3 and "UTF-8" in str(err) and str(err).startswith(f"{path}:3: ")


def test_missing_file_and_directory(tmp_path):
    err = _read_error(tmp_path / "nope.jsonl")
    assert err.line is None and str(err) == f"{tmp_path / 'nope.jsonl'}: file not found"
    err = _read_error(tmp_path)
    assert "not a regular file" in str(err)


# ---------------------------------------------------------------- writing


def test_write_round_trip_utf8_not_escaped(tmp_path):
    records = [{"title": "臺灣新聞標題", "id": "0"}, {"title": "", "id": 1}, {"title": "emoji 🎉 \u2028", "id": "2"}]
    out = tmp_path / "out.jsonl"
    write_jsonl_atomic(out, records)
    raw = out.read_text(encoding="utf-8")
    assert "臺灣新聞標題" in raw and "🎉" in raw and "\\u" not in raw  # ensure_ascii=False
    assert raw.count("\n") == len(records) and raw.endswith("\n")
    assert [json.loads(line) for line in raw.split("\n")[:-1]] == records
    assert read_jsonl(out, text_column="title", require_summary=False, allow_empty_text=True) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_written_file_gets_normal_permissions(tmp_path):
    # mkstemp creates 0600 files; the output must get the mode open() would give (umask applied),
    # and an existing file must keep its mode.
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    out = tmp_path / "out.jsonl"
    write_jsonl_atomic(out, [{"id": 1, "title": "t"}])
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
    os.chmod(out, 0o640)
    write_jsonl_atomic(out, [{"id": 2, "title": "u"}])
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def _assert_only(directory: Path, names: list[str]) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)  # no temp file left behind


def test_failed_serialisation_leaves_old_file_intact(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl_atomic(out, [{"id": 1, "title": "舊"}])
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl_atomic(out, [{"id": 2, "title": "新"}, {"id": 3, "title": object()}])
    assert out.read_bytes() == before
    _assert_only(tmp_path, ["out.jsonl"])


def test_failure_midway_through_writing_the_temp_file(tmp_path):
    # A lone surrogate serialises (ensure_ascii=False) but cannot be encoded as UTF-8, so the error
    # comes while the temp file is being written, after many good lines.
    out = tmp_path / "out.jsonl"
    write_jsonl_atomic(out, [{"id": 1, "title": "舊"}])
    before = out.read_bytes()
    records = [{"id": i, "title": "新標題" * 50} for i in range(2000)] + [{"id": "bad", "title": "\ud800"}]
    with pytest.raises(UnicodeEncodeError):
        write_jsonl_atomic(out, records)
    assert out.read_bytes() == before
    _assert_only(tmp_path, ["out.jsonl"])


def test_failure_at_rename_removes_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("old", encoding="utf-8")

    def failing_replace(src, dst):
        assert Path(src).parent == out.parent and Path(src).read_text(encoding="utf-8") == "new"
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(out, "new")
    assert out.read_text(encoding="utf-8") == "old"
    _assert_only(tmp_path, ["out.txt"])


def test_never_replaces_a_protected_input(tmp_path, monkeypatch):
    data = _write_lines(tmp_path / "input.jsonl", [_rec("a")])
    before = data.read_bytes()
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    hard = tmp_path / "hard.jsonl"
    os.link(data, hard)
    for target in [data, "input.jsonl", "./sub/../input.jsonl", link, hard]:
        if "sub" in str(target):
            (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(DataError, match="refusing to overwrite the input file"):
            write_jsonl_atomic(target, [{"id": "a", "title": "x"}], protected=[data])
    assert data.read_bytes() == before
    # A different output path is fine.
    write_jsonl_atomic(tmp_path / "output.jsonl", [{"id": "a", "title": "x"}], protected=[data])
    assert (tmp_path / "output.jsonl").exists()


def test_missing_output_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_jsonl_atomic(tmp_path / "no" / "out.jsonl", [{"id": 1}])
    _assert_only(tmp_path, [])

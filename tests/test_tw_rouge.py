"""tw_rouge: equal to the ``rouge`` package on the same segmentation, robust to empty text, lazy and
side-effect free, with a CLI that scores a submission like the course's eval.py. No network."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from tw_rouge import (
    CharSegmenter,
    CkipDataMissingError,
    CkipSegmenter,
    JiebaSegmenter,
    default_ckip_dir,
    get_rouge,
    get_segmenter,
    rouge_f_per_pair,
)
from tw_rouge.segment import missing_ckip_files

METRICS = ("rouge-1", "rouge-2", "rouge-l")
ZERO = {m: {"r": 0.0, "p": 0.0, "f": 0.0} for m in METRICS}


def jieba_join(text: str) -> str:
    import jieba

    return " ".join(jieba.lcut(text))


def char_join(text: str) -> str:
    return " ".join(ch for ch in text if not ch.isspace())


def reference_rouge(preds: list[str], refs: list[str], join, avg: bool):
    """The ``rouge`` package itself on pre-joined text: the numbers tw_rouge must reproduce."""
    from rouge import Rouge

    return Rouge().get_scores([join(p) for p in preds], [join(r) for r in refs], avg=avg)


@pytest.fixture(scope="module")
def lead_pairs(lcsts_val) -> tuple[list[str], list[str]]:
    """All 967 lcsts_val pairs: prediction = first 20 characters of the article, reference = title."""
    return [r["maintext"][:20] for r in lcsts_val], [r["title"] for r in lcsts_val]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No segmenter or ckip dir chosen by the environment; the ckip cache points at an empty dir."""
    monkeypatch.delenv("TW_ROUGE_SEGMENTER", raising=False)
    monkeypatch.delenv("TW_ROUGE_CKIP_DIR", raising=False)
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    return xdg


# ---------------------------------------------------------------- equality with the rouge package


@pytest.mark.parametrize("segmenter, join", [("jieba", jieba_join), ("char", char_join)])
@pytest.mark.parametrize("avg", [True, False])
def test_equals_rouge_package_exactly_on_real_pairs(lead_pairs, segmenter, join, avg):
    preds, refs = lead_pairs
    assert len(preds) > 900 and sum("." in t for t in preds + refs) > 10  # exercises rouge's "." split
    ours = get_rouge(preds, refs, avg=avg, segmenter=segmenter)
    assert ours == reference_rouge(preds, refs, join, avg)  # exact, not approx
    if avg:
        assert 0.05 < ours["rouge-1"]["f"] < 0.6  # a sane lead baseline, not all zeros


def test_jieba_and_char_disagree(lead_pairs):
    # Guards the tests above against both segmenters silently doing the same thing.
    preds, refs = lead_pairs
    assert get_rouge(preds[:50], refs[:50], segmenter="jieba") != get_rouge(preds[:50], refs[:50], segmenter="char")


def test_course_example_by_hand():
    # 我/是/人 vs 我/是/一/個/人 (the char segmentation equals CKIP's here): P = 1, R = 3/5.
    scores = get_rouge("我是人", "我是一個人", segmenter="char")
    assert scores["rouge-1"]["p"] == 1.0 and scores["rouge-1"]["r"] == 0.6
    assert scores["rouge-1"]["f"] == pytest.approx(2 * 0.6 / (1.6 + 1e-8), abs=1e-15)
    assert scores["rouge-2"]["p"] == 0.5 and scores["rouge-2"]["r"] == 0.25  # 我是 matches of 是人/我是


# ---------------------------------------------------------------- empty predictions


def _with_empties(lead_pairs, n: int = 300):
    preds, refs = list(lead_pairs[0][:n]), list(lead_pairs[1][:n])
    blanks = ["", "   ", "\n\t", "\u3000"]
    for k, i in enumerate(range(0, n, 7)):
        preds[i] = blanks[k % len(blanks)]
    refs[5] = ""  # an empty reference scores 0 as well
    keep = [i for i in range(n) if preds[i].strip() and refs[i].strip()]
    return preds, refs, keep


def test_empty_predictions_score_zero_and_count_in_the_average(lead_pairs):
    preds, refs, keep = _with_empties(lead_pairs)
    n, k = len(preds), len(keep)
    assert n - k >= 40

    per_pair = get_rouge(preds, refs, avg=False, segmenter="jieba")
    expected_kept = reference_rouge([preds[i] for i in keep], [refs[i] for i in keep], jieba_join, avg=False)
    assert [per_pair[i] for i in keep] == expected_kept
    assert all(per_pair[i] == ZERO for i in range(n) if i not in set(keep))

    averaged = get_rouge(preds, refs, avg=True, segmenter="jieba")
    rouge_avg_kept = reference_rouge([preds[i] for i in keep], [refs[i] for i in keep], jieba_join, avg=True)
    for m in METRICS:
        for s in ("r", "p", "f"):
            # zeros add nothing to the sum, but the divisor is all n pairs
            assert averaged[m][s] == sum(scores[m][s] for scores in expected_kept) / n
            assert averaged[m][s] == pytest.approx(rouge_avg_kept[m][s] * k / n, rel=1e-12)


def test_ignore_empty_drops_pairs_like_rouge(lead_pairs):
    preds, refs, keep = _with_empties(lead_pairs)
    kept_preds, kept_refs = [preds[i] for i in keep], [refs[i] for i in keep]
    assert get_rouge(preds, refs, ignore_empty=True, segmenter="jieba") == reference_rouge(
        kept_preds, kept_refs, jieba_join, avg=True
    )
    assert len(get_rouge(preds, refs, avg=False, ignore_empty=True, segmenter="jieba")) == len(keep)
    with pytest.raises(ValueError, match="no prediction"):
        get_rouge(["", " "], ["標題", "標題"], ignore_empty=True, segmenter="jieba")


@pytest.mark.parametrize("segmenter", ["jieba", "char"])
def test_degenerate_predictions_never_crash(segmenter):
    preds = ["", " ", "...", ".", " . ", "。", "!!!", "a.b", "\u3000\u3000"]
    per_pair = get_rouge(preds, ["台北市長選舉結果出爐"] * len(preds), avg=False, segmenter=segmenter)
    assert per_pair[:5] == [ZERO] * 5  # the rouge package raises "Hypothesis is empty." on "..." and "."
    assert get_rouge(["", " "], ["標題", "另一個標題"], segmenter=segmenter) == ZERO


# ---------------------------------------------------------------- API details


def test_strings_lists_and_tuples():
    as_str = get_rouge("我是人", "我是一個人", segmenter="char")
    assert get_rouge(["我是人"], ["我是一個人"], segmenter="char") == as_str
    assert get_rouge(("我是人",), ("我是一個人",), segmenter="char") == as_str
    assert get_rouge("我是人", "我是一個人", avg=False, segmenter="char") == [as_str]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="2 predictions and 3 references"):
        get_rouge(["a", "b"], ["a", "b", "c"], segmenter="char")
    with pytest.raises(ValueError, match="unknown segmenter 'spacy'"):
        get_rouge(["a"], ["a"], segmenter="spacy")
    with pytest.raises(ValueError):
        get_rouge([], [], segmenter="char")


def test_env_var_picks_the_segmenter(monkeypatch, lead_pairs):
    preds, refs = lead_pairs[0][:40], lead_pairs[1][:40]
    monkeypatch.setenv("TW_ROUGE_SEGMENTER", "char")
    assert isinstance(get_segmenter(), CharSegmenter)
    assert get_rouge(preds, refs) == get_rouge(preds, refs, segmenter="char")
    monkeypatch.setenv("TW_ROUGE_SEGMENTER", "jieba")
    assert isinstance(get_segmenter(), JiebaSegmenter)
    assert get_rouge(preds, refs) == get_rouge(preds, refs, segmenter="jieba")
    assert isinstance(get_segmenter("char"), CharSegmenter)  # an explicit name wins
    monkeypatch.setenv("TW_ROUGE_SEGMENTER", "nope")
    with pytest.raises(ValueError, match="unknown segmenter 'nope'"):
        get_rouge(preds, refs)


class CountingJieba(JiebaSegmenter):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.segmented: list[str] = []

    def _segment_batch(self, texts):
        self.calls += 1
        self.segmented.extend(texts)
        return super()._segment_batch(texts)


def test_segmentation_cache_segments_each_text_once(lead_pairs):
    preds, refs = lead_pairs[0][:200], lead_pairs[1][:200]
    other_preds = [r[::-1] for r in refs]
    seg = CountingJieba()
    first = get_rouge(preds, refs, avg=False, segmenter=seg)
    assert seg.calls == 2  # one batch for the predictions, one for the references
    second = get_rouge(other_preds, refs, avg=False, segmenter=seg)  # an evaluation/RL step reusing refs
    get_rouge(preds, refs, avg=False, segmenter=seg)  # the very same call again
    rewards = rouge_f_per_pair(preds + preds, refs + refs, segmenter=seg)  # duplicates within one call
    counts = Counter(seg.segmented)
    assert set(counts) == set(preds) | set(refs) | set(other_preds)
    assert max(counts.values()) == 1
    assert first == get_rouge(preds, refs, avg=False, segmenter=JiebaSegmenter())  # cache changes nothing
    assert second == reference_rouge(other_preds, refs, jieba_join, avg=False)
    assert rewards[:200] == rewards[200:]
    assert get_segmenter("jieba") is get_segmenter("jieba")  # named segmenters (and caches) are shared


def test_segmentation_cache_is_bounded():
    class CountingChar(CharSegmenter):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.segmented: list[str] = []

        def _segment_batch(self, texts):
            self.segmented.extend(texts)
            return super()._segment_batch(texts)

    seg = CountingChar(cache_size=3)
    assert seg.segment(["甲乙", "丙", "丁", "戊"]) == [["甲", "乙"], ["丙"], ["丁"], ["戊"]]
    assert len(seg._cache) == 3
    seg.segment(["戊", "甲乙"])  # 戊 is cached; 甲乙 (least recently used) was evicted
    assert seg.segmented == ["甲乙", "丙", "丁", "戊", "甲乙"]


def test_rouge_f_per_pair_reward(lead_pairs):
    preds, refs = list(lead_pairs[0][:50]), list(lead_pairs[1][:50])
    preds[3] = ""
    per_pair = get_rouge(preds, refs, avg=False, segmenter="jieba")
    rewards = rouge_f_per_pair(preds, refs, segmenter="jieba")
    assert rewards == pytest.approx([sum(s[m]["f"] for m in METRICS) / 3 for s in per_pair], abs=1e-15)
    assert rewards[3] == 0.0 and max(rewards) > 0
    assert rouge_f_per_pair(preds, refs, weights={"rouge-2": 2.0}, segmenter="jieba") == [
        s["rouge-2"]["f"] for s in per_pair
    ]
    with pytest.raises(ValueError, match="rouge-4"):
        rouge_f_per_pair(preds, refs, weights={"rouge-4": 1.0}, segmenter="jieba")
    with pytest.raises(ValueError, match="positive"):
        rouge_f_per_pair(preds, refs, weights={"rouge-1": 0.0}, segmenter="jieba")


# ---------------------------------------------------------------- ckip data dir and missing data


def test_ckip_missing_data_error_names_dir_and_command(clean_env):
    with pytest.raises(CkipDataMissingError) as info:
        get_rouge(["我是人"], ["我是一個人"], segmenter="ckip")
    message = str(info.value)
    assert str(clean_env / "ckiptagger" / "data") in message
    assert "python -m tw_rouge download" in message
    assert isinstance(info.value, FileNotFoundError)
    assert list(clean_env.iterdir()) == []  # nothing created while failing
    with pytest.raises(CkipDataMissingError):  # ckip is the default segmenter (the grading one)
        get_rouge(["我是人"], ["我是一個人"])


def test_ckip_dir_resolution_expands_home(clean_env, monkeypatch, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)

    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert default_ckip_dir() == home / "xdg" / "ckiptagger" / "data"
    with pytest.raises(CkipDataMissingError) as info:
        get_rouge("我是人", "我是一個人", segmenter="ckip")
    assert str(home / "xdg" / "ckiptagger" / "data") in str(info.value) and "~" not in str(info.value)
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []  # no literal "~" dir, nothing made

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_ckip_dir() == home / ".cache" / "ckiptagger" / "data"
    monkeypatch.setenv("TW_ROUGE_CKIP_DIR", "~/ckip")  # the explicit dir wins over XDG
    assert default_ckip_dir() == home / "ckip"
    assert CkipSegmenter("~/elsewhere").data_dir == home / "elsewhere"
    with pytest.raises(CkipDataMissingError, match=str(home / "given")):
        get_rouge("我是人", "我是一個人", segmenter="ckip", ckip_dir="~/given")


def test_course_example_with_ckip_data(monkeypatch):
    data_dir = os.environ.get("TW_ROUGE_CKIP_DIR")
    if not data_dir or missing_ckip_files(Path(data_dir).expanduser()):
        pytest.skip("ckiptagger data not available (set TW_ROUGE_CKIP_DIR to a complete copy to run this)")
    monkeypatch.delenv("TW_ROUGE_SEGMENTER", raising=False)
    assert get_rouge("我是人", "我是一個人")["rouge-1"]["f"] == pytest.approx(0.7499999953125, abs=1e-12)


# ---------------------------------------------------------------- import has no side effects


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TW_ROUGE_")}
    xdg = tmp_path / "xdg"
    xdg.mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(xdg), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_import_has_no_side_effects(tmp_path):
    dirs = {name: tmp_path / name for name in ("home", "tmp", "cwd")}
    for d in dirs.values():
        d.mkdir()
    env = _env(tmp_path, HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]))
    code = (
        "import json, sys\n"
        "import tw_rouge\n"
        "heavy = ('tensorflow', 'tf_keras', 'ckiptagger', 'jieba', 'torch')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    result = _run(["-c", code], env, cwd=dirs["cwd"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    for d in [*dirs.values(), tmp_path / "xdg"]:
        assert list(d.iterdir()) == [], f"import created {list(d.iterdir())}"


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli_files(tmp_path, lcsts_val):
    """A 60-article reference file and a lead-20 submission written in shuffled order."""
    refs = lcsts_val[:60]
    ref_path = tmp_path / "reference.jsonl"
    ref_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs), encoding="utf-8")
    submission = [{"title": r["maintext"][:20], "id": r["id"]} for r in refs]
    random.Random(0).shuffle(submission)
    assert [s["id"] for s in submission] != [r["id"] for r in refs]
    sub_path = tmp_path / "submission.jsonl"
    sub_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in submission), encoding="utf-8")
    return refs, ref_path, submission, sub_path


def test_cli_scores_by_id_and_writes_per_example(tmp_path, cli_files):
    refs, ref_path, _, sub_path = cli_files
    per_example = tmp_path / "per_example.jsonl"
    result = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(sub_path), "--segmenter", "jieba",
                   "--per-example", str(per_example)], _env(tmp_path))
    assert result.returncode == 0, result.stderr

    preds, titles = [r["maintext"][:20] for r in refs], [r["title"] for r in refs]
    expected = get_rouge(preds, titles, segmenter="jieba")
    assert result.stdout == json.dumps(expected, indent=2) + "\n"

    lines = [json.loads(line) for line in per_example.read_text(encoding="utf-8").splitlines()]
    assert [line.pop("id") for line in lines] == [r["id"] for r in refs]
    assert lines == get_rouge(preds, titles, avg=False, segmenter="jieba")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_example.jsonl", "reference.jsonl",
                                                          "submission.jsonl", "xdg"]


def test_cli_order_of_submission_irrelevant_and_env_segmenter(tmp_path, cli_files):
    refs, ref_path, submission, sub_path = cli_files
    in_order = tmp_path / "in_order.jsonl"
    by_id = {s["id"]: s for s in submission}
    in_order.write_text("".join(json.dumps(by_id[r["id"]], ensure_ascii=False) + "\n" for r in refs),
                        encoding="utf-8")
    env = _env(tmp_path, TW_ROUGE_SEGMENTER="char")
    shuffled = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(sub_path)], env)
    ordered = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(in_order)], env)
    assert shuffled.returncode == 0 and ordered.returncode == 0, shuffled.stderr + ordered.stderr
    assert shuffled.stdout == ordered.stdout
    expected = get_rouge([r["maintext"][:20] for r in refs], [r["title"] for r in refs], segmenter="char")
    assert json.loads(shuffled.stdout) == expected


def test_cli_missing_ids_fail(tmp_path, cli_files):
    refs, ref_path, submission, sub_path = cli_files
    dropped = [refs[i]["id"] for i in (2, 9, 17, 30, 41, 50, 59)]
    sub_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in submission
                                if s["id"] not in dropped), encoding="utf-8")
    result = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(sub_path), "--segmenter", "char"],
                  _env(tmp_path))
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert str(sub_path) in result.stderr and " 7 " in result.stderr
    for rid in dropped[:3]:
        assert repr(rid) in result.stderr


@pytest.mark.parametrize(
    "which, bad_line, fragment",
    [
        ("submission", "{not json", "malformed JSON"),
        ("submission", '{"id": "x"}', "'title'"),
        ("submission", '["a list"]', "JSON object"),
        ("reference", '{"title": "no id"}', "'id'"),
    ],
)
def test_cli_malformed_lines_name_file_and_line(tmp_path, cli_files, which, bad_line, fragment):
    _, ref_path, _, sub_path = cli_files
    path = sub_path if which == "submission" else ref_path
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(sub_path), "--segmenter", "char"],
                  _env(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{path}:4:" in result.stderr and fragment in result.stderr


def test_cli_bad_paths_fail_cleanly(tmp_path, cli_files):
    _, ref_path, _, sub_path = cli_files
    cases = [
        ["-r", str(ref_path), "-s", str(tmp_path / "absent.jsonl")],
        ["-r", str(tmp_path), "-s", str(sub_path)],  # a directory
        ["-r", str(ref_path), "-s", str(sub_path), "--per-example", str(tmp_path / "no" / "dir.jsonl")],
    ]
    for args in cases:
        result = _run(["-m", "tw_rouge", *args, "--segmenter", "char"], _env(tmp_path))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("extra", [[], ["--segmenter", "ckip"]])
def test_cli_ckip_missing_data_fails_with_message(tmp_path, cli_files, extra):
    _, ref_path, _, sub_path = cli_files
    result = _run(["-m", "tw_rouge", "-r", str(ref_path), "-s", str(sub_path), *extra], _env(tmp_path))
    assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
    assert str(tmp_path / "xdg" / "ckiptagger" / "data") in result.stderr
    assert "python -m tw_rouge download" in result.stderr


def _resolves(host: str, timeout: float = 5.0) -> bool:
    """True if ``host`` resolves within ``timeout`` seconds (a hanging resolver counts as offline)."""
    import socket

    outcome: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


@pytest.mark.slow  # imports TensorFlow (via ckiptagger) and waits for two failed downloads: 7-13 s here
def test_cli_download_fails_cleanly_offline(tmp_path):
    if _resolves("ckip.iis.sinica.edu.tw") or _resolves("drive.google.com"):
        pytest.skip("network available: this would start a real 2 GB download")
    parent = tmp_path / "ckip"
    parent.mkdir()
    result = _run(["-m", "tw_rouge", "download", "--dir", str(parent / "data")], _env(tmp_path), timeout=90)
    assert result.returncode != 0
    assert "could not download ckiptagger data" in result.stderr and "Traceback" not in result.stderr
    assert list(parent.iterdir()) == []  # no data dir, no staging dir left behind

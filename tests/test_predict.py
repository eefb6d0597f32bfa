"""predict.py / run.sh: batched generation equals one-by-one generate, output order and ids follow the
input, every error leaves no output behind, presets run, sweep mode writes its report."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import predict  # noqa: E402
from conftest import REPO, read_jsonl, save_tiny_export, write_jsonl
from generation import clean_title, generate_titles, load_presets, resolve_generation_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


make_export = save_tiny_export  # a random tiny untied mT5 export whose titles end at varied lengths


def one_by_one(model, tokenizer, texts, config, max_source_length=512, prefix="") -> list[str]:
    """The reference: plain ``generate`` on each article alone (no padding, no sorting)."""
    titles = []
    for text in texts:
        enc = tokenizer([prefix + text], truncation=True, max_length=max_source_length, return_tensors="pt")
        out = model.generate(**enc, generation_config=config)
        titles.append(clean_title(tokenizer.decode(out[0], skip_special_tokens=True)))
    return titles


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("export")
    return out, make_export(tiny_tokenizer, out)


@pytest.fixture(scope="module")
def texts(lcsts_val) -> list[str]:
    # varied lengths so batches need padding
    return [r["maintext"][: 20 + 9 * i] for i, r in enumerate(lcsts_val[:12])]


@pytest.mark.parametrize("preset", ["greedy", "beam4"])
def test_batched_sorted_generation_matches_one_by_one(export, tiny_tokenizer, texts, preset):
    _, model = export
    overrides = {"length_penalty": 2.0} if preset.startswith("beam") else {}  # longer, more varied beam titles
    config = resolve_generation_config(model.generation_config, preset, overrides)
    expected = one_by_one(model, tiny_tokenizer, texts, config)
    assert generate_titles(model, tiny_tokenizer, texts, config, batch_size=5) == expected
    assert len({len(t) for t in expected}) > 2  # titles end at different lengths: padding really is exercised


def test_a_named_preset_ignores_the_exports_own_strategy(tiny_tokenizer, texts):
    """An export whose generation_config.json blocks repeated n-grams (a selected ``*_norepeat`` strategy)
    must not pass that to another preset: transformers fills a passed config's default-valued fields from
    ``model.generation_config``, so ``PRESET=greedy``, sweeps and RL rollouts used to block repeats too."""
    from conftest import build_tiny_model

    plain = build_tiny_model(tiny_tokenizer, seed=3)
    plain.generation_config.max_new_tokens = 16
    selected = build_tiny_model(tiny_tokenizer, seed=3)
    selected.generation_config.max_new_tokens = 16
    selected.generation_config.no_repeat_ngram_size = 2  # as training writes after selecting a norepeat preset
    for preset in ("greedy", "beam4"):
        plain_config = resolve_generation_config(plain.generation_config, preset)
        expected = generate_titles(plain, tiny_tokenizer, texts, plain_config)
        config = resolve_generation_config(selected.generation_config, preset)
        assert generate_titles(selected, tiny_tokenizer, texts, config, batch_size=5) == expected, preset
        blocked = resolve_generation_config(selected.generation_config, preset, {"no_repeat_ngram_size": 2})
        assert generate_titles(selected, tiny_tokenizer, texts, blocked) != expected, preset  # the field matters here
        assert selected.generation_config.no_repeat_ngram_size == 2  # the export's own config is restored


def test_order_and_ids_follow_the_input(export, tiny_tokenizer, lcsts_val, tmp_path):
    model_dir, model = export
    pool = [r["maintext"][:60] for r in lcsts_val[12:60]]
    lengths = [len(tiny_tokenizer(t)["input_ids"]) for t in pool]
    same = next((i, j) for i in range(len(pool)) for j in range(i) if lengths[i] == lengths[j])
    texts = [pool[0], "", pool[same[0]], pool[5][:10], pool[same[1]], pool[7], ""]  # shuffled lengths, ties, empties
    ids = [17, "b", "c-3", 4, "五", "x", 0]
    records = [{"id": i, "maintext": t} for i, t in zip(ids, texts)]
    records[3]["title"] = "有標題也可以"
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "sub" / "out.jsonl"
    assert predict.main(["--model_dir", str(model_dir), "--input_file", str(inp), "--output_file", str(out),
                         "--preset", "greedy", "--per_device_batch_size", "3"]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ids
    assert all(list(r) == ["title", "id"] for r in rows)
    config = resolve_generation_config(model.generation_config, "greedy")
    assert [r["title"] for r in rows] == one_by_one(model, tiny_tokenizer, texts, config)
    assert '"五"' in out.read_text(encoding="utf-8")  # ensure_ascii=False


def test_titles_never_hold_special_tokens(tmp_path, tiny_tokenizer, lcsts_val):
    model = make_export(tiny_tokenizer, tmp_path)
    specials = [i for i in tiny_tokenizer.all_special_ids if i != model.config.pad_token_id]
    with torch.no_grad():  # make sentinels, unk and eos likely
        model.lm_head.weight[specials] *= 3.0
    model.save_pretrained(str(tmp_path))
    texts = [r["maintext"] for r in lcsts_val[:8]]
    config = resolve_generation_config(model.generation_config, "greedy")
    enc = tiny_tokenizer(texts, truncation=True, max_length=512, padding=True, return_tensors="pt")
    raw = model.generate(**enc, generation_config=config)
    assert any(i in specials and i != model.config.eos_token_id for i in raw[:, 1:].flatten().tolist())
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "maintext": t} for i, t in enumerate(texts)])
    out = tmp_path / "out.jsonl"
    assert predict.main(["--model_dir", str(tmp_path), "--input_file", str(inp), "--output_file", str(out),
                         "--preset", "greedy"]) == 0
    for row in read_jsonl(out):
        assert not any(tok in row["title"] for tok in ("<extra_id", "<unk>", "</s>", "<pad>", "\n", "\r"))


# --------------------------------------------------------------------------------------------- errors

def _corrupt_weights(d: Path, export_dir: Path) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes((export_dir / name).read_bytes())
    (d / "model.safetensors").write_bytes(b"not a safetensors file")


ERRORS = {
    "missing input": (lambda d, e: None, "in_missing", "file not found"),
    "malformed line": (lambda d, e: None, "in_malformed", "in.jsonl:2: malformed JSON"),
    "missing field": (lambda d, e: None, "in_no_text", "in.jsonl:1: missing field 'maintext'"),
    "model dir missing": (lambda d, e: None, "model_missing", "model directory not found"),
    "empty model dir": (lambda d, e: d.mkdir(), "model_empty", "no config.json"),
    "config not json": (lambda d, e: (d.mkdir(), (d / "config.json").write_text("{oops")), "model_badconfig",
                        "not a valid model config"),
    "no weights": (lambda d, e: (d.mkdir(), (d / "config.json").write_bytes((e / "config.json").read_bytes())),
                   "model_noweights", "no model weights"),
    "corrupt weights": (lambda d, e: (d.mkdir(), _corrupt_weights(d, e)), "model_corrupt", "cannot load the model"),
    "output is input": (lambda d, e: None, "out_same", "refusing to overwrite the input file"),
    "output is input, other spelling": (lambda d, e: None, "out_dot", "refusing to overwrite the input file"),
    "output is a symlink to input": (lambda d, e: None, "out_symlink", "refusing to overwrite the input file"),
    "unknown preset": (lambda d, e: None, "preset", "unknown decoding preset 'nope'"),
    "bad override": (lambda d, e: None, "override", "--top_p must be in (0, 1], got 1.5"),
    "invalid combination": (lambda d, e: None, "combination", "invalid generation settings"),
}


@pytest.mark.parametrize("existing_output", [False, True], ids=["no-output", "existing-output"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_leave_no_output(case, existing_output, export, tmp_path, capsys):
    export_dir, _ = export
    setup, kind, message = ERRORS[case]
    good = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "maintext": "台北今天下雨"}, {"id": 2, "maintext": "天晴"}])
    inp, out, model_dir, extra = good, tmp_path / "out.jsonl", export_dir, []
    if kind == "in_missing":
        inp = tmp_path / "absent.jsonl"
    elif kind == "in_malformed":
        good.write_text('{"id": 1, "maintext": "a"}\n{"id": 2, "maintext": \n', encoding="utf-8")
    elif kind == "in_no_text":
        good.write_text('{"id": 1, "text": "a"}\n', encoding="utf-8")
    elif kind.startswith("model_"):
        model_dir = tmp_path / "model"
        setup(model_dir, export_dir)
    elif kind == "out_same":
        out = inp
    elif kind == "out_dot":
        out = tmp_path / "." / ".." / tmp_path.name / "in.jsonl"
    elif kind == "out_symlink":
        out = tmp_path / "link.jsonl"
        out.symlink_to(inp)
    elif kind == "preset":
        extra = ["--preset", "nope"]
    elif kind == "override":
        extra = ["--top_p", "1.5", "--do_sample", "true"]
    elif kind == "combination":
        extra = ["--preset", "greedy", "--length_penalty", "2"]  # transformers: length_penalty needs beams
    if existing_output and not kind.startswith("out_"):
        out.write_text("precious\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    code = predict.main(["--model_dir", str(model_dir), "--input_file", str(inp), "--output_file", str(out),
                         *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing written
    assert not list(tmp_path.glob(".*.tmp"))


def test_generation_failure_keeps_existing_output(export, tmp_path, capsys, monkeypatch):
    export_dir, _ = export
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "maintext": "台北"}])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")

    def explode(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(predict.TitleEngine, "generate", explode)
    assert predict.main(["--model_dir", str(export_dir), "--input_file", str(inp), "--output_file", str(out)]) == 1
    assert "out of memory" in capsys.readouterr().err
    assert out.read_text() == "precious\n"


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    from dataclasses import fields

    for f in fields(predict.PredictArguments):
        assert f"--{f.name}" in text
        assert f.metadata.get("help")


# --------------------------------------------------------------------------------------------- settings

def test_training_settings_are_the_defaults(export, tiny_tokenizer, lcsts_val, tmp_path, caplog):
    from export import TitleConfig

    export_dir, model = export
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for p in export_dir.iterdir():
        if p.is_file():
            (model_dir / p.name).write_bytes(p.read_bytes())
    # what training writes: the strategy in generation_config.json, the source settings in title_config.json
    beam4 = resolve_generation_config(model.generation_config, "beam4")  # the export sets max_new_tokens=16
    beam4.save_pretrained(str(model_dir))
    TitleConfig(max_source_length=12, source_prefix="標題：", text_column="content", generation_preset="beam4",
                per_device_eval_batch_size=2, max_target_length=5).save(model_dir)
    texts = [r["maintext"] for r in lcsts_val[:4]]
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "content": t} for i, t in enumerate(texts)])
    out = tmp_path / "out.jsonl"
    assert predict.main(["--model_dir", str(model_dir), "--input_file", str(inp), "--output_file", str(out)]) == 0
    expected = one_by_one(model, tiny_tokenizer, texts, beam4, max_source_length=12, prefix="標題：")
    assert [r["title"] for r in read_jsonl(out)] == expected
    assert "preset beam4 (the export's own" in caplog.text and "'num_beams': 4" in caplog.text

    # flags win over the recorded settings; 0 is a value, not "unset"
    args = predict.parse_args(["--max_source_length", "30", "--source_prefix", "", "--per_device_batch_size", "7"])
    settings = predict.resolve_settings(args, predict.read_title_config(model_dir))
    assert (settings["max_source_length"], settings["source_prefix"], settings["batch_size"]) == (30, "", 7)
    assert settings["text_column"] == "content"
    with pytest.raises(predict.UsageError, match="--per_device_batch_size must be positive, got 0"):
        predict.resolve_settings(predict.parse_args(["--per_device_batch_size", "0"]), TitleConfig())
    # an export without title_config.json gets the contract's defaults, the same as training's
    defaults = predict.resolve_settings(predict.parse_args([]), predict.read_title_config(export_dir))
    assert (defaults["max_source_length"], defaults["source_prefix"], defaults["text_column"],
            defaults["batch_size"]) == (512, "", "maintext", 32)
    from parse_arg import parse_args as parse_training_args

    training = parse_training_args([])
    assert (training.data.max_source_length, training.data.max_target_length, training.data.text_column,
            training.train.per_device_eval_batch_size) == (512, 64, "maintext", 32)


def test_max_target_length_fills_a_missing_limit(export, tmp_path):
    from transformers import GenerationConfig

    export_dir, _ = export
    (tmp_path / "generation_config.json").write_text(GenerationConfig(decoder_start_token_id=0).to_json_string())
    assert predict.load_base_generation_config(tmp_path, 64).max_new_tokens == 64
    assert predict.load_base_generation_config(export_dir, 64).max_new_tokens == 16  # the export's own wins


def test_every_shipped_preset_parses_and_runs(export, tiny_tokenizer, texts):
    _, model = export
    presets = load_presets()
    shipped = {"greedy", "beam4", "beam5", "beam5_norepeat", "sample_t0.7", "top_k50", "top_p0.9", "rl_sample"}
    assert shipped <= set(presets)
    for name in presets:
        config = resolve_generation_config(model.generation_config, name, {"max_new_tokens": 4})
        titles = generate_titles(model, tiny_tokenizer, texts[:3], config, batch_size=2)
        assert len(titles) == 3 and all(isinstance(t, str) for t in titles), name


def test_cli_overrides_reach_generation(export, tmp_path, caplog):
    export_dir, _ = export
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "maintext": "台北今天下雨"}])
    argv = ["--model_dir", str(export_dir), "--input_file", str(inp), "--output_file", str(tmp_path / "o.jsonl"),
            "--preset", "top_p0.9", "--temperature", "0.5", "--top_k", "7", "--max_new_tokens", "3", "--seed", "1"]
    assert predict.main(argv) == 0
    assert "preset top_p0.9" in caplog.text
    for expected in ("'do_sample': True", "'top_k': 7", "'top_p': 0.9", "'temperature': 0.5", "'max_new_tokens': 3"):
        assert expected in caplog.text
    first = (tmp_path / "o.jsonl").read_text()
    assert predict.main(argv) == 0
    assert (tmp_path / "o.jsonl").read_text() == first  # --seed makes sampling reproducible


# --------------------------------------------------------------------------------------------- run.sh

def test_run_sh_end_to_end_from_another_directory(export, tmp_path, lcsts_val):
    export_dir, _ = export
    work = tmp_path / "elsewhere"
    work.mkdir()
    write_jsonl(work / "in.jsonl", [{"id": r["id"], "maintext": r["maintext"]} for r in lcsts_val[:5]])
    env = {**os.environ, "MODEL_DIR": str(export_dir), "PRESET": "greedy", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "run.sh"), "in.jsonl", "out.jsonl"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "preset greedy" in proc.stderr
    rows = read_jsonl(work / "out.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in lcsts_val[:5]]

    # usage errors: exit 2 with a usage line, before Python starts
    proc = subprocess.run(["bash", str(REPO / "run.sh"), "in.jsonl"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: bash run.sh INPUT.jsonl OUTPUT.jsonl [MODEL_DIR]" in proc.stderr
    # a third argument names the model; errors from predict.py come through with a non-zero status
    proc = subprocess.run(["bash", str(REPO / "run.sh"), "in.jsonl", "out2.jsonl", str(work)], cwd=work,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    assert not (work / "out2.jsonl").exists()


# --------------------------------------------------------------------------------------------- sweep

def test_sweep_writes_scored_report(export, lcsts_val, tmp_path):
    from tw_rouge import get_rouge

    export_dir, _ = export
    ref = write_jsonl(tmp_path / "ref.jsonl",
                      [{"id": r["id"], "maintext": r["maintext"], "title": r["title"]} for r in lcsts_val[:6]])
    out_dir = tmp_path / "sweep"
    assert predict.main(["--model_dir", str(export_dir), "--sweep", "greedy", "beam4", "--reference", str(ref),
                         "--output_dir", str(out_dir), "--segmenter", "char", "--max_new_tokens", "8"]) == 0
    assert {p.name for p in out_dir.iterdir()} == {"greedy.jsonl", "beam4.jsonl", "sweep.md", "sweep.csv", "sweep.png"}
    import csv

    rows = list(csv.DictReader((out_dir / "sweep.csv").open(encoding="utf-8")))
    assert [r["preset"] for r in rows] == ["greedy", "beam4"]
    refs = [r["title"] for r in lcsts_val[:6]]
    for row in rows:
        preds = read_jsonl(out_dir / f"{row['preset']}.jsonl")
        assert [p["id"] for p in preds] == [r["id"] for r in lcsts_val[:6]]
        titles = [p["title"] for p in preds]
        scores = get_rouge(titles, refs, segmenter="char")
        for metric in ("rouge-1", "rouge-2", "rouge-l"):
            assert float(row[metric]) == pytest.approx(100 * scores[metric]["f"], abs=1e-3)
        assert float(row["mean_title_chars"]) == pytest.approx(sum(map(len, titles)) / 6, abs=1e-3)
        assert float(row["seconds_per_article"]) > 0 and row["num_articles"] == "6"
    md = (out_dir / "sweep.md").read_text(encoding="utf-8")
    assert "| greedy |" in md and "| beam4 |" in md
    assert (out_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_fails_fast_without_ckip_data(export, lcsts_val, tmp_path, monkeypatch, capsys):
    export_dir, _ = export
    monkeypatch.setenv("TW_ROUGE_CKIP_DIR", str(tmp_path / "no-ckip"))
    ref = write_jsonl(tmp_path / "ref.jsonl", [{"id": 1, "maintext": "台北", "title": "台北"}])
    code = predict.main(["--model_dir", str(export_dir), "--sweep", "greedy", "--reference", str(ref),
                         "--output_dir", str(tmp_path / "sweep"), "--segmenter", "ckip"])
    assert code == 2 and "ckiptagger data not found" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()

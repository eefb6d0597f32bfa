"""Smoke tests of the benchmark helpers (no benchmark is run): steady-state arithmetic, data pools,
batch accounting on real collated batches, and run_all's report when a benchmark is absent or fails."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO, read_records


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return load_bench("bench_train")


@pytest.fixture(scope="module")
def run_all():
    return load_bench("run_all")


def test_summarise_run_times_only_the_steps_after_warm_up(bench_train):
    batches = [{"rows": 4, "source_len": 512, "target_len": 16, "source_tokens": 2048},  # warm-up, not counted
               {"rows": 4, "source_len": 100, "target_len": 20, "source_tokens": 300},
               {"rows": 2, "source_len": 50, "target_len": 10, "source_tokens": 80}]
    raw = {"step_end_s": [10.0, 12.0, 16.0], "batches": batches, "peak_rss_mb": 100.0, "process_s": 20.0,
           "final_loss": 1.0, "torch_threads": 2}
    summary = bench_train.summarise_run(raw, warmup_steps=1, steps=2)
    assert summary["window_s"] == pytest.approx(6.0)
    assert summary["samples"] == 6 and summary["source_tokens"] == 380
    assert summary["samples_per_s"] == pytest.approx(1.0)
    assert summary["source_tokens_per_s"] == pytest.approx(380 / 6)
    assert summary["s_per_step"] == pytest.approx(3.0)
    assert summary["source_padding_efficiency"] == pytest.approx(380 / (4 * 100 + 2 * 50))
    assert summary["mean_padded_target_len"] == pytest.approx((4 * 20 + 2 * 10) / 6)
    with pytest.raises(ValueError, match="need 4"):
        bench_train.summarise_run(raw, warmup_steps=1, steps=3)


def test_paired_ratios_and_verdicts_in_the_table(bench_train):
    def run(samples_per_s, tokens_per_s=100.0):
        return {"samples_per_s": samples_per_s, "source_tokens_per_s": tokens_per_s, "s_per_step": 1.0,
                "peak_rss_mb": 1024.0, "source_padding_efficiency": 0.5, "mean_padded_source_len": 100.0,
                "mean_padded_target_len": 10.0, "torch_threads": 2}

    runs = {"ours": [run(2.0, 300.0), run(3.0, 300.0), run(1.0, 300.0)],
            "hf_max_length": [run(1.0, 100.0), run(1.0, 100.0), run(1.0, 100.0)],  # ours: x2, x3, x1
            "hf_grouped": [run(2.0, 300.0), run(3.1, 300.0), run(1.02, 300.0)]}  # ours: x1, x0.97, x0.98
    ratios = bench_train.paired_ratios(runs)
    assert ratios["ours/hf_max_length"]["per_round"] == pytest.approx([2.0, 3.0, 1.0])
    assert ratios["ours/hf_max_length"]["samples_per_s"] == pytest.approx(2.0)
    assert ratios["ours/hf_max_length"]["source_tokens_per_s"] == pytest.approx(3.0)
    assert ratios["ours/hf_max_length"]["met"]
    assert ratios["ours/hf_grouped"]["samples_per_s"] == pytest.approx(1 / 1.02)
    assert not ratios["ours/hf_grouped"]["met"]

    shape = {"settings": {"batch_size": 4, "steps": 6, "warmup_steps": 1, "repeats": 3, "pool_size": 96},
             "model": {"parameters": 300e6, "config": {"vocab_size": 250112, "d_model": 512, "num_layers": 8,
                                                       "num_decoder_layers": 8}},
             "runs": runs, "summary": {name: rs[0] for name, rs in runs.items()}, "ratios": ratios,
             "identical_batches": [True, True, False]}
    results = {"settings": {"max_source_length": 512, "max_target_length": 64, "learning_rate": 1e-4,
                            "long_fraction": 0.25},
               "shapes": {"mt5-small": shape}, "environment": {"load_average_1min": 1.0, "cpu_count": 2}}
    table = bench_train.markdown_table(results)
    assert "x2.00 samples/s (rounds: 2.00, 3.00, 1.00), x3.00 source tokens/s; target >= x1.5: met" in table
    assert "x0.98 samples/s (rounds: 1.00, 0.97, 0.98)" in table and "not met, but within 3%" in table
    assert "identical batches: NO" in table
    runs["hf_grouped"][0]["samples_per_s"] = 2.5  # ours x0.8 in the median round: a real miss
    runs["hf_grouped"][2]["samples_per_s"] = 1.25
    shape["ratios"] = bench_train.paired_ratios(runs)
    assert "target >= x1.0: MISSED" in bench_train.markdown_table(results)


def test_draw_pool_mixes_long_and_short_without_repeats(bench_train):
    long = [{"id": f"L{i}", "maintext": "長" * 600, "title": "t"} for i in range(10)]
    short = [{"id": f"S{i}", "maintext": "短", "title": "t", "extra": 1} for i in range(30)]
    pool = bench_train.draw_pool(long, short, 20, 0.25, seed=3)
    ids = [r["id"] for r in pool]
    assert len(set(ids)) == 20 and sum(i.startswith("L") for i in ids) == 5
    assert set(pool[0]) == {"id", "maintext", "title"}
    assert pool == bench_train.draw_pool(long, short, 20, 0.25, seed=3)
    assert ids != [r["id"] for r in bench_train.draw_pool(long, short, 20, 0.25, seed=4)]
    with pytest.raises(SystemExit, match="needs 15 long articles"):
        bench_train.draw_pool(long, short, 20, 0.75, seed=3)


def test_batch_records_count_real_tokens_of_collated_batches(bench_train, tiny_tokenizer):
    from transformers import DataCollatorForSeq2Seq

    import seq2seq_data

    records = read_records("lcsts_train.jsonl", 6)
    dataset = seq2seq_data.tokenize_pairs(records, tiny_tokenizer, max_source_length=40, max_target_length=8)
    features = [dataset[i] for i in range(len(dataset))]
    lengths = [len(f["input_ids"]) for f in features]
    log: list[dict] = []
    inner = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)
    collator = bench_train.RecordingCollator(inner, log)
    collator([{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in features[:4]])
    ours = seq2seq_data.IndexedSeq2SeqCollator(tiny_tokenizer)
    log.append(bench_train.batch_record(ours(features[4:])))
    assert [b["rows"] for b in log] == [4, 2]
    assert [b["source_tokens"] for b in log] == [sum(lengths[:4]), sum(lengths[4:])]
    assert [b["source_len"] for b in log] == [max(lengths[:4]), max(lengths[4:])]
    assert log[0]["target_len"] == max(len(f["labels"]) for f in features[:4])


def test_run_all_reports_an_absent_and_a_failing_benchmark(run_all, tmp_path, monkeypatch, capsys):
    failing = tmp_path / "bench_fails.py"
    failing.write_text("import sys\nprint('| not | a result |')\nsys.exit(3)\n", encoding="utf-8")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", {"rouge": ("bench_fails.py", "Failing"),
                                                "inference": ("bench_missing.py", "Missing")})
    out = tmp_path / "RESULTS.md"
    code = run_all.main(["--only", "rouge", "inference", "--out", str(out), "--json-dir", str(tmp_path / "json")])
    assert code == 1  # one benchmark failed
    report = out.read_text(encoding="utf-8")
    assert "| rouge | failed: exited with 3 and wrote no rouge.json |" in report
    assert "| inference | absent: bench_missing.py is not in the repository |" in report
    assert "Machine: " in report and "Load average" in report and "--only rouge inference" in report


def test_run_all_renders_a_script_without_markdown_table_from_its_printed_tables(run_all, tmp_path, monkeypatch):
    stdout = "progress\n| a | b |\n| --- | --- |\n| 1 | 2 |\nwrote x.json\n"
    assert run_all.tables_from_stdout(stdout) == "| a | b |\n| --- | --- |\n| 1 | 2 |"
    (tmp_path / "bench_plain.py").write_text("print('no markdown_table here')\n", encoding="utf-8")
    (tmp_path / "bench_broken.py").write_text("def markdown_table(results):\n    return results['missing']\n",
                                              encoding="utf-8")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", {"plain": ("bench_plain.py", "Plain"),
                                                "broken": ("bench_broken.py", "Broken")})
    record = {"status": "ok", "results": {"x": 1}, "stdout": stdout, "command": "bench/bench_plain.py",
              "seconds": 3.0}
    plain = run_all.render_section("plain", record)
    assert plain.startswith("## Plain") and plain.endswith("| a | b |\n| --- | --- |\n| 1 | 2 |")
    broken = run_all.render_section("broken", record)
    assert "its markdown_table failed: KeyError" in broken

"""Tests of the benchmark code (no benchmark is run): the harness (child runner, cached random export,
machine description, JSON writer), the steady-state arithmetic, paired ratios and verdicts, data pools,
batch accounting on real collated batches through the recording collator, run_all's report, and the
command line of every benchmark."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import bench_inference, bench_prune, bench_rouge, bench_train, harness, run_all
from conftest import REPO, TINY_MT5, read_records, write_jsonl

BENCH_MODULES = ("bench.bench_train", "bench.bench_inference", "bench.bench_rouge", "bench.bench_prune",
                 "bench.run_all")


# ----------------------------------------------------------------------------------------------------
# harness: child runner


@pytest.fixture()
def child_module(tmp_path, monkeypatch):
    """A module the children can import (``fake_measure``), on the children's PYTHONPATH."""
    (tmp_path / "fake_measure.py").write_text(
        "import time\n"
        "def echo(spec):\n"
        "    print('measuring', spec['x'])\n"
        "    return {'echo': spec['x'], 'text': spec['text']}\n"
        "def fails(spec):\n"
        "    for i in range(40):\n"
        "        print(f'progress line {i}')\n"
        "    raise ValueError('the measured code broke')\n"
        "def silent(spec):\n"
        "    raise SystemExit(0)\n"
        "def sleeps(spec):\n"
        "    time.sleep(60)\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    yield work
    sys.modules.pop("fake_measure", None)


def test_run_child_returns_the_result_with_peak_rss_and_keeps_a_log(child_module):
    result = harness.run_child("fake_measure:echo", {"x": 3, "text": "新聞標題"}, child_module, "run-1",
                               env={"EXTRA_FLAG": "1"})
    assert result["echo"] == 3 and result["text"] == "新聞標題"
    assert 1 < result["peak_rss_mb"] < 4096  # MiB of a small Python process, not KiB or bytes
    assert "measuring 3" in (child_module / "run-1.log").read_text(encoding="utf-8")
    assert json.loads((child_module / "run-1.spec.json").read_text(encoding="utf-8"))["x"] == 3


def test_peak_rss_is_the_childs_own_not_its_parents(tmp_path):
    # a parent that touched 512 MiB starts a child: ru_maxrss would hand the child the parent's peak
    parent = ("import subprocess, sys\n"
              "x = bytearray(512 * 2**20)\n"
              "for i in range(0, len(x), 4096): x[i] = 1\n"
              "code = 'from bench.harness import peak_rss_mb; print(peak_rss_mb())'\n"
              "print(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(harness.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, env=env, check=True).stdout
    assert 1 < float(out) < 256
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1024 kB\n", encoding="ascii")
    assert harness.peak_rss_mb(status) == 200.0
    assert harness.peak_rss_mb(tmp_path / "absent") > 1  # falls back to ru_maxrss


def test_run_child_reports_a_failing_child_with_the_tail_of_its_log(child_module):
    (child_module / "run-2.result.json").write_text('{"stale": true}', encoding="utf-8")  # a previous run's
    with pytest.raises(harness.ChildError) as failure:
        harness.run_child("fake_measure:fails", {}, child_module, "run-2", timeout=60)
    message = str(failure.value)
    assert message.startswith("run-2 exited with 1; last lines of ") and str(child_module / "run-2.log") in message
    assert "ValueError: the measured code broke" in message and "progress line 39" in message
    assert "progress line 10\n" not in message  # only the tail, not the whole log
    assert not (child_module / "run-2.result.json").exists()
    with pytest.raises(harness.ChildError, match="exited with 0 but wrote no result"):
        harness.run_child("fake_measure:silent", {}, child_module, "run-3")


def test_run_child_kills_a_child_past_its_timeout(child_module):
    started = time.perf_counter()
    with pytest.raises(harness.ChildError, match="run-4 timed out after 2 s"):
        harness.run_child("fake_measure:sleeps", {}, child_module, "run-4", timeout=2)
    assert time.perf_counter() - started < 30


def test_child_main_calls_the_target_on_the_spec(tmp_path, child_module):
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"x": 7, "text": "t"}), encoding="utf-8")
    assert harness.child_main(["fake_measure:echo", str(spec), str(result)]) == 0
    written = json.loads(result.read_text(encoding="utf-8"))
    assert written["echo"] == 7 and 0 < written["peak_rss_mb"] <= harness.peak_rss_mb()


def test_rotation_gives_no_contender_a_fixed_slot():
    order = [harness.rotation(bench_train.CONTENDERS, r) for r in range(4)]
    assert order[0] == ["ours", "hf_max_length", "hf_grouped"]
    assert order[1] == ["hf_max_length", "hf_grouped", "ours"]
    assert order[2] == ["hf_grouped", "ours", "hf_max_length"]
    assert order[3] == order[0]


# ----------------------------------------------------------------------------------------------------
# harness: machine, JSON, cached export


def test_machine_has_what_the_results_header_prints(tmp_path):
    info = harness.machine()
    assert {"cpu", "cpu_count", "memory_gib", "torch_threads", "python", "os", "versions",
            "load_average"} <= set(info)
    assert set(harness.LIBRARIES) <= set(info["versions"]) and info["versions"]["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads() and len(info["load_average"]) == 3
    json.dumps(info)  # goes into every --json file
    header = run_all.render({}, info, "bash bench/run_all.sh", run_all.datetime.now(run_all.timezone.utc), 60.0,
                            (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), threads=1)
    assert f"- Machine: {info['cpu']}, {info['cpu_count']} logical CPUs" in header
    assert f"torch {info['versions']['torch']} ({info['torch_threads']} threads by default)" in header

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core\n",
                       encoding="utf-8")
    assert harness.cpu_model(cpuinfo) == "AMD EPYC 7B13 64-Core"
    assert harness.cpu_model(tmp_path / "absent")  # falls back to what platform knows


def test_write_json_is_atomic_and_fails_clearly(tmp_path):
    out = tmp_path / "figures.json"
    harness.write_json(out, {"title": "標題", "x": [1.5]})
    assert json.loads(out.read_text(encoding="utf-8")) == {"title": "標題", "x": [1.5]}
    with pytest.raises(TypeError):
        harness.write_json(out, {"x": object()})
    assert json.loads(out.read_text(encoding="utf-8"))["x"] == [1.5]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json"]  # no temporary file left
    with pytest.raises(SystemExit, match="cannot write"):
        harness.write_json(tmp_path / "missing" / "figures.json", {})


def test_random_export_is_reused_when_the_recipe_matches_and_rebuilt_when_it_differs(tmp_path, lcsts_train,
                                                                                      tiny_tokenizer, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM

    import modeling

    trained: list[int] = []  # vocab sizes of the tokenizers trained
    builds: list[str] = []  # the children started

    def fake_training(texts, output_dir, vocab_size):  # sentencepiece itself is tested elsewhere; count calls
        trained.append(vocab_size)
        tiny_tokenizer.save_pretrained(str(output_dir))
        return modeling.get_tokenizer(str(output_dir))

    def in_process_child(target, spec, work_dir, name, **kwargs):  # the build, here instead of in a child
        builds.append(f"{target} {name}")
        module, _, function = target.partition(":")
        return getattr(sys.modules[module], function)(json.loads(json.dumps(spec)))

    monkeypatch.setattr(modeling, "train_sentencepiece_tokenizer", fake_training)
    monkeypatch.setattr(harness, "run_child", in_process_child)
    texts = [r["maintext"] for r in lcsts_train[:50]] + [r["title"] for r in lcsts_train[:50]]
    config = {k: v for k, v in TINY_MT5.items() if k != "vocab_size"}
    first = harness.random_mt5_export(tmp_path, texts, config, vocab_size=4000, seed=0, name="tiny")
    assert builds == ["bench.harness:build_random_export build-tiny"]  # built in a child: the caller stays small
    assert trained == [4000] and not first.reused and first.build_s is not None and first.dir == tmp_path / "tiny"
    assert first.tokenizer_size == len(tiny_tokenizer)
    assert first.config["vocab_size"] == modeling.round_up(len(tiny_tokenizer))  # from the tokenizer
    model = AutoModelForSeq2SeqLM.from_pretrained(str(first.dir))
    assert modeling.count_parameters(model)[0] == first.parameters and not modeling.lm_head_is_tied(model)
    assert len(modeling.get_tokenizer(str(first.dir))) == len(tiny_tokenizer)
    weights = (first.dir / "model.safetensors").read_bytes()

    again = harness.random_mt5_export(tmp_path, list(texts), dict(config), vocab_size=4000, seed=0, name="tiny")
    assert again.reused and again.build_s is None and len(builds) == 1 and trained == [4000]
    assert (again.parameters, again.config, again.tokenizer_size) == (first.parameters, first.config,
                                                                      first.tokenizer_size)
    assert (first.dir / "model.safetensors").read_bytes() == weights

    (first.dir / "ct2-int8").mkdir()  # a conversion of the old weights must not survive a rebuild
    reseeded = harness.random_mt5_export(tmp_path, texts, config, vocab_size=4000, seed=1, name="tiny")
    assert not reseeded.reused and trained == [4000]  # a new model on the cached tokenizer
    assert (first.dir / "model.safetensors").read_bytes() != weights and not (first.dir / "ct2-int8").exists()
    wider = harness.random_mt5_export(tmp_path, texts, {**config, "d_ff": 256}, vocab_size=4000, seed=1, name="tiny")
    assert not wider.reused and wider.parameters > reseeded.parameters
    assert json.loads((first.dir / "config.json").read_text(encoding="utf-8"))["d_ff"] == 256
    harness.random_mt5_export(tmp_path, texts[1:], config, vocab_size=4000, seed=1, name="tiny")
    harness.random_mt5_export(tmp_path, texts[1:], config, vocab_size=5000, seed=1, name="tiny")
    assert trained == [4000, 4000, 5000]  # other texts, another vocabulary size: the tokenizer is trained again
    other = harness.random_mt5_export(tmp_path, texts, config, vocab_size=4000, seed=1, name="other")
    assert not other.reused and other.dir == tmp_path / "other" and (tmp_path / "tiny" / "config.json").is_file()
    assert len(builds) == 6


def test_building_an_export_that_ties_lm_head_against_its_config_fails(tmp_path, tiny_tokenizer, monkeypatch):
    import modeling

    monkeypatch.setattr(modeling, "lm_head_is_tied", lambda model: True)
    spec = {"out": str(tmp_path / "bad"), "tokenizer_dir": str(tmp_path / "tok"), "texts": ["x"], "seed": 0,
            "config": TINY_MT5, "tokenizer_recipe": {"vocab_size": 10}, "recipe": {}}
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "tok" / harness.BUILD_INFO).write_text(json.dumps({"recipe": {"vocab_size": 10}}), encoding="utf-8")
    with pytest.raises(RuntimeError, match="ties lm_head"):
        harness.build_random_export(spec)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------------
# bench_train: arithmetic, ratios, pools, batch accounting


def test_summarise_run_times_only_the_steps_after_warm_up():
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


def test_paired_ratios_and_verdicts_in_the_table():
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
               "shapes": {"mt5-small": shape}, "machine": {"load_average": [1.5, 1.0, 1.0], "cpu_count": 2}}
    table = bench_train.markdown_table(results)
    assert "x2.00 samples/s (rounds: 2.00, 3.00, 1.00), x3.00 source tokens/s; target >= x1.5: met" in table
    assert "x0.98 samples/s (rounds: 1.00, 0.97, 0.98)" in table and "not met, but within 3%" in table
    assert "identical batches: NO" in table
    assert "torch threads per run: 2; 1-minute load average at the end: 1.50 on 2 CPUs" in table
    runs["hf_grouped"][0]["samples_per_s"] = 2.5  # ours x0.8 in the median round: a real miss
    runs["hf_grouped"][2]["samples_per_s"] = 1.25
    shape["ratios"] = bench_train.paired_ratios(runs)
    assert "target >= x1.0: MISSED" in bench_train.markdown_table(results)


def test_draw_pool_mixes_long_and_short_without_repeats():
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


def test_recording_factories_log_the_batches_our_loop_trains_on(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    """Our contender's batches are recorded through ``train_decoder.Factories(collator=...)``: the log holds
    every batch the training loader yields, in order, with its real token counts."""
    import seq2seq_data
    import train_decoder
    from parse_arg import parse_args

    records = read_records("lcsts_train.jsonl", 24)
    train_file = write_jsonl(tmp_path / "train.jsonl", records)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_MT5), encoding="utf-8")
    args = parse_args(["--config_name", str(config), "--tokenizer_name", str(tiny_tokenizer_dir),
                       "--train_file", str(train_file), "--validation_file", str(train_file),
                       "--output_dir", str(tmp_path / "out"), "--segmenter", "char", "--max_source_length", "48",
                       "--max_target_length", "12", "--per_device_train_batch_size", "5", "--group_by_length", "true"])
    log: list[dict] = []
    trainer = train_decoder.build_trainer(args, bench_train.recording_factories(log))
    assert log == []  # nothing is collated before training starts
    trainer.train_loader.set_epoch(0)
    seen = list(trainer.train_loader)
    assert log == [bench_train.batch_record(b) for b in seen]
    assert len(log) == 5 and sum(b["rows"] for b in log) == 24
    lengths = [len(f["input_ids"]) for f in seq2seq_data.tokenize_pairs(records, tiny_tokenizer, max_source_length=48,
                                                                        max_target_length=12)]
    for batch, record in zip(seen, log):
        rows = batch["example_index"].tolist()
        assert record["source_tokens"] == sum(lengths[i] for i in rows)
        assert record["source_len"] == max(lengths[i] for i in rows)
    assert sorted(i for b in seen for i in b["example_index"].tolist()) == list(range(24))


def test_recording_collator_counts_the_trainer_contenders_batches(tiny_tokenizer):
    from transformers import DataCollatorForSeq2Seq

    import seq2seq_data

    records = read_records("lcsts_train.jsonl", 6)
    dataset = seq2seq_data.tokenize_pairs(records, tiny_tokenizer, max_source_length=40, max_target_length=8)
    features = [{k: dataset[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(dataset))]
    log: list[dict] = []
    collator = bench_train.RecordingCollator(DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100), log)
    collator(features[:4])
    collator(features[4:])
    lengths = [len(f["input_ids"]) for f in features]
    assert [b["rows"] for b in log] == [4, 2]
    assert [b["source_tokens"] for b in log] == [sum(lengths[:4]), sum(lengths[4:])]
    assert [b["source_len"] for b in log] == [max(lengths[:4]), max(lengths[4:])]
    assert log[0]["target_len"] == max(len(f["labels"]) for f in features[:4])


def test_check_raw_rejects_a_tied_model_and_a_token_count_mismatch():
    batches = [{"rows": 2, "source_len": 10, "target_len": 4, "source_tokens": 200}]
    bench_train.check_raw("r", "ours", {"logged_source_tokens": [201.0], "batches": batches})  # within 1%
    with pytest.raises(RuntimeError, match="step 1 logged 150 source tokens, the collated batch had 200"):
        bench_train.check_raw("r", "ours", {"logged_source_tokens": [150.0], "batches": batches})
    with pytest.raises(RuntimeError, match="tied lm_head"):
        bench_train.check_raw("r", "hf_grouped", {"lm_head_tied": True})


# ----------------------------------------------------------------------------------------------------
# bench_inference


def test_inference_speedups_and_table():
    results = [{"engine": e, "strategy": s, "articles": n, "seconds_per_article": t, "peak_rss_mb": 1000.0}
               for e, s, n, t in (("naive", "greedy", 2, 4.0), ("hf", "greedy", 4, 2.0), ("ct2", "greedy", 4, 0.5),
                                  ("naive", "beam4", 2, 8.0), ("hf", "beam4", 4, 4.0), ("ct2", "beam4", 4, 1.0))]
    speedups = bench_inference.speedups_vs_naive(results)
    assert speedups == {"greedy": {"hf": 2.0, "ct2": 8.0}, "beam4": {"hf": 2.0, "ct2": 8.0}}
    report = {"results": results, "speedup_vs_naive": speedups, "articles": 4, "naive_articles": 2, "naive_step": 2,
              "config": {"engines": ["naive", "hf", "ct2"]},
              "beam4_target": {"fastest": "ct2", "speedup": 8.0, "target": 3.0, "met": True}}
    table = bench_inference.markdown_table(report)
    assert "| beam4 | ct2 | 4 | 1.000 | 8.00 | 1000 |" in table and "| greedy | naive | 2 | 4.000 | 1.00 |" in table
    assert "fastest of ours is ct2, 8.00x naive (target 3.0x: met)" in table
    assert "naive was timed on 2 of the 4 articles" in table
    assert bench_inference.speedups_vs_naive([r for r in results if r["engine"] != "naive"]) == {}


# ----------------------------------------------------------------------------------------------------
# command lines


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_every_benchmark_help_works_and_spells_flags_with_underscores(module):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=str(REPO),
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    flags = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", proc.stdout))
    assert {"--data_dir", "--json"} <= flags
    assert [f for f in flags if "-" in f[2:]] == []


def test_run_all_flags_are_what_each_benchmark_accepts(tmp_path):
    args = run_all.parse_args(["--data_dir", str(tmp_path), "--threads", "1", "--train_repeats", "2",
                               "--inference_articles", "5", "--json_dir", str(tmp_path)])
    parsed = {name: module.parse_args(run_all.script_flags(name, args, tmp_path / f"{name}.json"))
              for name, module in (("train", bench_train), ("rouge", bench_rouge), ("inference", bench_inference),
                                   ("prune", bench_prune))}
    for name, values in parsed.items():
        assert values.data_dir == tmp_path and values.json == tmp_path / f"{name}.json"
    assert parsed["train"].threads == 1 and parsed["train"].mt5_small_repeats == parsed["train"].tiny_repeats == 2
    assert parsed["inference"].threads == 1 and parsed["inference"].num_articles == 5
    assert parsed["prune"].threads == 1 and parsed["prune"].repeats == 2
    assert parsed["prune"].num_articles == bench_prune.parse_args([]).num_articles  # bench_inference's flag only
    assert set(run_all.BENCHMARKS) == set(parsed)
    assert run_all.parse_args(["--only", "prune"]).only == ["prune"]
    assert run_all.load_markdown_table("prune") is bench_prune.markdown_table


# ----------------------------------------------------------------------------------------------------
# run_all


def fake_benchmarks(tmp_path, monkeypatch, package: str, files: dict[str, str]) -> None:
    """A package ``package`` of benchmark modules in ``tmp_path``, importable here and in children."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
    for name, source in files.items():
        (tmp_path / package / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_run_all_reports_an_absent_and_a_failing_benchmark(tmp_path, monkeypatch, capsys):
    fake_benchmarks(tmp_path, monkeypatch, "fake_report",
                    {"bench_fails": "import sys\nprint('| not | a result |')\nsys.exit(3)\n"})
    monkeypatch.setattr(run_all, "BENCHMARKS", {"rouge": ("fake_report.bench_fails", "Failing"),
                                                "inference": ("fake_report.bench_missing", "Missing")})
    out = tmp_path / "RESULTS.md"
    code = run_all.main(["--only", "rouge", "inference", "--out", str(out), "--json_dir", str(tmp_path / "json")])
    assert code == 1  # one benchmark failed
    report = out.read_text(encoding="utf-8")
    assert "| rouge | failed: exited with 3 and wrote no rouge.json |" in report
    assert "| inference | absent: fake_report/bench_missing.py is not in the repository |" in report
    assert "Last lines of its output:\n\n```\n| not | a result |\n```" in report
    assert f"== rouge: python -m fake_report.bench_fails --data_dir {harness.DEFAULT_DATA_DIR} --json " in (
        capsys.readouterr().out)
    assert "Machine: " in report and "Load average" in report and "--only rouge inference" in report


def test_run_all_renders_a_module_without_markdown_table_from_its_printed_tables(tmp_path, monkeypatch):
    stdout = "progress\n| a | b |\n| --- | --- |\n| 1 | 2 |\nwrote x.json\n"
    assert run_all.tables_from_stdout(stdout) == "| a | b |\n| --- | --- |\n| 1 | 2 |"
    fake_benchmarks(tmp_path, monkeypatch, "fake_render",
                    {"bench_plain": "print('no markdown_table here')\n",
                     "bench_broken": "def markdown_table(results):\n    return results['missing']\n"})
    monkeypatch.setattr(run_all, "BENCHMARKS", {"plain": ("fake_render.bench_plain", "Plain"),
                                                "broken": ("fake_render.bench_broken", "Broken"),
                                                "train": ("bench.bench_train", "Training")})
    record = {"status": "ok", "results": {"x": 1}, "stdout": stdout, "command": "python -m fake_render.bench_plain",
              "seconds": 3.0}
    plain = run_all.render_section("plain", record)
    assert plain.startswith("## Plain") and plain.endswith("| a | b |\n| --- | --- |\n| 1 | 2 |")
    assert "its markdown_table failed: KeyError" in run_all.render_section("broken", record)
    assert run_all.load_markdown_table("train") is bench_train.markdown_table


def test_run_all_merge_replaces_only_the_benchmarks_it_ran(tmp_path, monkeypatch):
    info = harness.machine()
    when = run_all.datetime(2026, 12, 3, 12, 0, tzinfo=run_all.timezone.utc)
    first = {"train": {"status": "failed", "error": "old train", "seconds": 10.0},
             "prune": {"status": "failed", "error": "old prune", "seconds": 20.0}}
    original = run_all.render(first, info, "bash bench/run_all.sh", when, 30.0, (0.1, 0.1, 0.1), (0.2, 0.2, 0.2))
    again = {"prune": {"status": "failed", "error": "new prune", "seconds": 5.0},
             "rouge": {"status": "failed", "error": "new rouge", "seconds": 7.0}}
    merged = run_all.merge(original, again, info, "bash bench/run_all.sh --only prune rouge --merge", when,
                           (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    header, sections = run_all.split_sections(merged)
    assert list(sections) == ["## Training throughput", "## Vocabulary pruning: full mt5-small shape against pruned "
                              "vocabularies", "## tw_rouge throughput"]  # replaced in place, the new one appended
    assert "old train" in sections["## Training throughput"] and "Merged" not in sections["## Training throughput"]
    prune = sections["## Vocabulary pruning: full mt5-small shape against pruned vocabularies"]
    assert "new prune" in prune and "old prune" not in prune
    assert "*Merged from a separate run* (`--merge`): 2026-12-03 12:00 UTC, `bash bench/run_all.sh --only prune " \
           "rouge --merge`" in prune and "load average before 1.00, 1.00, 1.00, after 2.00, 2.00, 2.00" in prune
    rows = [line for line in header if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| train | failed: old train | 10 |", "| prune | failed: new prune (merged, 2026-12-03) | 5 |",
                    "| rouge | failed: new rouge (merged, 2026-12-03) | 7 |"]
    assert merged.count("Sections marked *merged*") == 1
    assert run_all.merge(merged, again, info, "x", when, (1, 1, 1), (1, 1, 1)).count("Sections marked") == 1
    with pytest.raises(ValueError, match="not a RESULTS.md"):
        run_all.merge("# Something else\n", again, info, "x", when, (1, 1, 1), (1, 1, 1))

    out = tmp_path / "RESULTS.md"
    out.write_text("notes by hand\n", encoding="utf-8")
    monkeypatch.setattr(run_all, "run_benchmark", lambda name, args: again[name])
    assert run_all.main(["--only", "prune", "--merge", "--out", str(out), "--json_dir", str(tmp_path)]) == 2
    assert out.read_text(encoding="utf-8") == "notes by hand\n"  # refused, never overwritten

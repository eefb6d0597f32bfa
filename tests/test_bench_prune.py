"""Tests of ``bench/bench_prune.py`` (no benchmark is run): the pruned-export builder on a tiny model
(rows, untied lm_head, logits, cache), the export size, the plain training loop (CPU; its CUDA path refuses
cleanly without a GPU), the ratio and verdict arithmetic, the report, and the command line."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from bench import bench_prune, bench_train, harness
from conftest import build_tiny_model, read_records, write_jsonl

SOURCE_ROWS = 8192  # the tiny "full" model: more rows than the 4,100-token tokenizer, like mt5-small's 250,112


@pytest.fixture()
def in_process_children(monkeypatch):
    """``harness.run_child`` runs the target here (the spec through JSON, as a child reads it); records the calls."""
    calls: list[dict] = []

    def run_child(target, spec, work_dir, name, **kwargs):
        spec = json.loads(json.dumps(spec))
        calls.append({"target": target, "name": name, "spec": spec})
        module, _, function = target.partition(":")
        return getattr(sys.modules[module], function)(spec)

    monkeypatch.setattr(harness, "run_child", run_child)
    return calls


def tiny_source(directory, tokenizer, recipe: dict) -> harness.RandomExport:
    """A tiny random untied mT5 with ``SOURCE_ROWS`` rows, saved like ``harness.random_mt5_export`` saves one."""
    model = build_tiny_model(tokenizer, vocab_size=SOURCE_ROWS)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    parameters = sum(p.numel() for p in model.parameters())
    (directory / harness.BUILD_INFO).write_text(json.dumps({"recipe": recipe, "export": {}}), encoding="utf-8")
    return harness.RandomExport(dir=directory, parameters=parameters, config={"vocab_size": SOURCE_ROWS},
                                tokenizer_size=len(tokenizer), reused=False)


def test_pruned_exports_keep_the_first_rows_untied_with_equal_logits_and_are_reused(tmp_path, tiny_tokenizer,
                                                                                    in_process_children):
    from transformers import AutoModelForSeq2SeqLM

    import modeling

    source = tiny_source(tmp_path / "model-tiny", tiny_tokenizer, {"seed": 0})
    full = AutoModelForSeq2SeqLM.from_pretrained(str(source.dir)).eval()
    assert not modeling.lm_head_is_tied(full)
    exports = bench_prune.pruned_exports(tmp_path, source, [4200, 6000])
    assert [c["name"] for c in in_process_children] == ["build-pruned"]  # one child builds both
    assert list(exports) == [4200, 6000] and not any(e.reused for e in exports.values())

    record = read_records("lcsts_train.jsonl", 1)[0]
    enc = tiny_tokenizer([record["maintext"]], return_tensors="pt", truncation=True, max_length=64)
    labels = tiny_tokenizer(text_target=[record["title"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full_logits = full(**enc, labels=labels).logits
    for rows, export in exports.items():
        assert export.dir == tmp_path / f"model-tiny-pruned-{rows}" and export.tokenizer_size == len(tiny_tokenizer)
        pruned = AutoModelForSeq2SeqLM.from_pretrained(str(export.dir)).eval()
        assert pruned.get_input_embeddings().weight.shape == (rows, 64) and pruned.lm_head.weight.shape == (rows, 64)
        assert not modeling.lm_head_is_tied(pruned) and pruned.config.vocab_size == rows == export.config["vocab_size"]
        assert torch.equal(pruned.lm_head.weight, full.lm_head.weight[:rows])
        assert torch.equal(pruned.shared.weight, full.shared.weight[:rows])
        assert export.parameters == modeling.count_parameters(pruned)[0] == source.parameters - 2 * 64 * (
            SOURCE_ROWS - rows)
        with torch.no_grad():
            logits = pruned(**enc, labels=labels).logits
        torch.testing.assert_close(logits, full_logits[..., :rows], rtol=1e-5, atol=1e-5)
        assert modeling.get_tokenizer(str(export.dir)).get_vocab() == tiny_tokenizer.get_vocab()
    weights = (exports[4200].dir / "model.safetensors").read_bytes()

    again = bench_prune.pruned_exports(tmp_path, source, [4200, 6000, 5000])
    assert again[4200].reused and again[6000].reused and not again[5000].reused
    assert [e["rows"] for e in in_process_children[-1]["spec"]["exports"]] == [5000]  # only the new one is built
    assert (again[4200].dir / "model.safetensors").read_bytes() == weights
    assert again[6000].parameters == exports[6000].parameters

    (exports[4200].dir / "ct2-int8").mkdir()  # a conversion of stale weights must go with them
    reseeded = tiny_source(tmp_path / "model-tiny", tiny_tokenizer, {"seed": 1})  # another full model
    rebuilt = bench_prune.pruned_exports(tmp_path, reseeded, [4200])
    assert not rebuilt[4200].reused and len(in_process_children) == 3
    assert not (rebuilt[4200].dir / "ct2-int8").exists()


def test_pruned_export_refuses_rows_that_drop_tokenizer_ids(tmp_path, tiny_tokenizer):
    source = tiny_source(tmp_path / "model-tiny", tiny_tokenizer, {"seed": 0})
    spec = {"source": str(source.dir), "exports": [{"rows": 512, "out": str(tmp_path / "small"), "recipe": {}}]}
    with pytest.raises(RuntimeError, match=r"cannot keep 512 rows: the tokenizer has ids up to 4099"):
        bench_prune.build_pruned_exports(spec)
    spec["exports"][0]["rows"] = SOURCE_ROWS
    with pytest.raises(RuntimeError, match=f"cannot keep {SOURCE_ROWS} rows"):
        bench_prune.build_pruned_exports(spec)
    assert not (tmp_path / "small").exists()


def test_export_size_counts_the_saved_files_not_conversions_or_bookkeeping(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_bytes(b"y" * 30)
    (tmp_path / harness.BUILD_INFO).write_bytes(b"z" * 500)
    (tmp_path / "ct2-int8").mkdir()
    (tmp_path / "ct2-int8" / "model.bin").write_bytes(b"w" * 300)
    assert bench_prune.export_size_bytes(tmp_path) == 1030
    assert bench_prune.directory_size_bytes(tmp_path / "ct2-int8") == 300
    assert bench_prune.directory_size_bytes(tmp_path / "absent") is None
    with pytest.raises(FileNotFoundError, match="no such export directory"):
        bench_prune.export_size_bytes(tmp_path / "absent")


# ----------------------------------------------------------------------------------------------------
# the plain training loop


def test_measure_steps_trains_on_our_loops_batches_and_splits_the_step(tmp_path, tiny_model_dir, one_thread):
    import train_decoder
    from parse_arg import parse_args

    records = read_records("lcsts_train.jsonl", 14)
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    spec = {"export": str(tiny_model_dir), "train_file": str(pool), "device": "cpu", "threads": 1, "batch_size": 4,
            "warmup_steps": 1, "steps": 2, "max_source_length": 256, "max_target_length": 24, "learning_rate": 1e-2,
            "seed": 5}
    raw = bench_prune.measure_steps(spec)
    assert len(raw["steps"]) == 3 and raw["device"] == "cpu" and raw["peak_gpu_allocated_mb"] is None
    for step in raw["steps"]:
        assert min(step["forward_s"], step["backward_s"], step["optimizer_s"]) > 0
        assert step["total_s"] == pytest.approx(step["forward_s"] + step["backward_s"] + step["optimizer_s"])
    assert all(math.isfinite(x) for x in raw["losses"]) and len(set(raw["losses"])) == 3

    log: list[dict] = []  # the batches train_decoder.py trains on, with the same pool, lengths and seed
    args = parse_args(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(pool), "--validation_file",
                       str(pool), "--output_dir", str(tmp_path / "out"), "--segmenter", "char",
                       "--max_source_length", "256", "--max_target_length", "24", "--per_device_train_batch_size", "4",
                       "--group_by_length", "true", "--seed", "5"])
    trainer = train_decoder.build_trainer(args, bench_train.recording_factories(log))
    trainer.train_loader.set_epoch(0)
    list(trainer.train_loader)
    assert raw["batches"] == log[:3] and [b["rows"] for b in raw["batches"]] == [4, 4, 4]
    assert len({b["source_len"] for b in log}) > 1  # lengths vary: the comparison can tell batches apart

    summary = bench_prune.summarise_steps(raw, warmup_steps=1)
    timed = raw["steps"][1:]
    assert summary["steps"] == 2 and summary["total_s"] == pytest.approx(sum(s["total_s"] for s in timed) / 2)
    assert summary["samples_per_s"] == pytest.approx(8 / sum(s["total_s"] for s in timed))


def test_the_gpu_path_refuses_cleanly_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = {"export": str(tmp_path / "never-loaded"), "device": "cuda", "threads": 1}
    with pytest.raises(bench_prune.CudaUnavailable, match="--device cuda: torch .* sees no CUDA device"):
        bench_prune.measure_steps(spec)  # before anything is loaded: the export does not even exist
    assert bench_prune.gpu_note("cuda", available=False).startswith("skipped: --device cuda was given")
    assert bench_prune.gpu_note("cpu", available=False) == "no GPU run (--device cpu); this machine has no GPU"
    assert bench_prune.gpu_note("cuda", available=True) is None


def test_summarise_steps_on_literal_figures():
    batch = {"rows": 2, "source_len": 100, "target_len": 10, "source_tokens": 150}
    raw = {"steps": [{"forward_s": 9.0, "backward_s": 9.0, "optimizer_s": 9.0, "total_s": 27.0},  # warm-up
                     {"forward_s": 1.0, "backward_s": 2.0, "optimizer_s": 1.0, "total_s": 4.0},
                     {"forward_s": 1.0, "backward_s": 4.0, "optimizer_s": 1.0, "total_s": 6.0},
                     {"forward_s": 3.0, "backward_s": 2.0, "optimizer_s": 3.0, "total_s": 8.0}],
           "batches": [batch] * 4, "peak_gpu_allocated_mb": 2048.0, "device_name": "GPU X"}
    summary = bench_prune.summarise_steps(raw, warmup_steps=1)
    assert (summary["forward_s"], summary["backward_s"], summary["optimizer_s"], summary["total_s"]) == (1, 2, 1, 6)
    assert summary["samples_per_s"] == pytest.approx(6 / 18) and summary["source_tokens_per_s"] == pytest.approx(25)
    assert summary["peak_gpu_allocated_mb"] == 2048.0 and summary["device_name"] == "GPU X"
    with pytest.raises(ValueError, match="none after 4 warm-up"):
        bench_prune.summarise_steps(raw, warmup_steps=4)


# ----------------------------------------------------------------------------------------------------
# ratios, verdicts, report


def test_verdict_at_least_and_at_most_with_noise():
    assert bench_prune.verdict(1.3, 1.3, at_least=True) == "met"
    assert bench_prune.verdict(1.29, 1.3, at_least=True, noise=0.03) == "not met, but within 3% (measurement noise)"
    assert bench_prune.verdict(1.25, 1.3, at_least=True, noise=0.03) == "MISSED"
    assert bench_prune.verdict(1.29, 1.3, at_least=True) == "MISSED"  # no noise allowance: exact figures
    assert bench_prune.verdict(0.6, 0.6, at_least=False) == "met"
    assert bench_prune.verdict(0.61, 0.6, at_least=False) == "MISSED"
    assert bench_prune.verdict(0.61, 0.6, at_least=False, noise=0.03).startswith("not met, but within 3%")


def literal_runs():
    def train(samples_per_s, rss):
        return {"samples_per_s": samples_per_s, "source_tokens_per_s": samples_per_s * 100,
                "s_per_step": 4 / samples_per_s, "peak_rss_mb": rss, "mean_padded_source_len": 180.0,
                "mean_padded_target_len": 16.0, "torch_threads": 1}

    training = {"full/ours": [train(1.0, 7000), train(1.0, 7000), train(0.5, 7000)],
                "full/hf_grouped": [train(1.1, 7100), train(1.0, 7100), train(1.0, 7100)],
                "pruned-40000/ours": [train(1.5, 3000), train(1.2, 3000), train(1.0, 3500)]}  # x1.5, x1.2, x2.0
    inference = {"full/hf": [{"seconds_per_article": 3.0, "peak_rss_mb": 2000, "tokens_per_article": [64]}],
                 "full/ct2": [{"seconds_per_article": 0.6, "peak_rss_mb": 900, "tokens_per_article": [64]}],
                 "pruned-40000/hf": [{"seconds_per_article": 1.0, "peak_rss_mb": 800, "tokens_per_article": [64]}],
                 "pruned-40000/ct2": [{"seconds_per_article": 0.4, "peak_rss_mb": 400, "tokens_per_article": [64]}]}
    return training, inference


def test_pruned_ratios_are_medians_of_per_round_ratios_and_give_the_verdicts():
    training, inference = literal_runs()
    sizes = {"full": 1200, "pruned-40000": 360}
    ratios = bench_prune.pruned_ratios(training, inference, sizes, "pruned-40000")
    assert ratios["train_vs_full_ours"]["per_round"] == pytest.approx([1.5, 1.2, 2.0])
    assert ratios["train_vs_full_ours"]["median"] == pytest.approx(1.5)  # not 3.7 / 2.5 of the summed figures
    assert ratios["train_vs_full_hf_grouped"]["median"] == pytest.approx(1.2)
    assert ratios["peak_rss"]["median"] == pytest.approx(3000 / 7000)
    assert ratios["export_size"]["median"] == pytest.approx(0.3)
    assert ratios["beam4_hf_speedup"]["median"] == pytest.approx(3.0)
    assert ratios["beam4_ct2_speedup"]["median"] == pytest.approx(1.5)
    found = {v["key"]: v["verdict"] for v in bench_prune.verdicts(ratios)}
    assert found == {"train_vs_full_ours": "met", "train_vs_full_hf_grouped": "MISSED", "peak_rss": "met",
                     "export_size": "met", "beam4_hf_speedup": "met", "beam4_ct2_speedup": "MISSED"}
    partial = bench_prune.pruned_ratios({}, inference, sizes, "pruned-40000")  # e.g. --skip_cpu: no training
    assert "train_vs_full_ours" not in partial and "export_size" in partial
    assert {v["key"]: v["verdict"] for v in bench_prune.verdicts(partial)}["peak_rss"] == "not measured"
    with pytest.raises(ValueError, match="same non-zero number"):
        bench_prune.paired_ratio([1.0, 2.0], [1.0])


def literal_results(gpu: dict) -> dict:
    training, inference = literal_runs()
    models = {"full": {"rows": 250112, "parameters": 300.2e6, "export_bytes": 1200 * 2**20, "ct2_bytes": 300 * 2**20},
              "pruned-40000": {"rows": 40000, "parameters": 85e6, "export_bytes": 330 * 2**20, "ct2_bytes": None}}
    ratios = {"pruned-40000": bench_prune.pruned_ratios(training, inference, {n: m["export_bytes"] for n, m in
                                                                            models.items()}, "pruned-40000")}
    settings = {"kept": [40000], "tokenizer_size": 16100, "batch_size": 4, "steps": 6, "warmup_steps": 1,
                "long_fraction": 0.25, "max_source_length": 512, "max_target_length": 64, "learning_rate": 1e-4,
                "repeats": 3, "profile_steps": 2, "new_tokens": 64, "inference_batch_size": 8, "inference_repeats": 1,
                "gpu_batch_size": 16, "gpu_steps": 10, "gpu_warmup_steps": 3}
    summary = {job: {k: rs[0][k] for k in rs[0] if k != "torch_threads"} for job, rs in training.items()}
    return {"settings": settings, "models": models,
            "training": {"pool_size": 96, "runs": training, "summary": summary, "identical_batches": [True, True]},
            "inference": {"articles": 12, "mean_source_tokens": 300.0,
                          "summary": {job: rs[0] for job, rs in inference.items()}},
            "ratios": ratios, "verdicts": bench_prune.verdicts(ratios["pruned-40000"]), "gpu": gpu,
            "machine": {"load_average": [1.5, 1.0, 1.0], "cpu_count": 2}}


def test_markdown_table_says_how_the_counts_were_chosen_and_gives_verdicts_and_the_gpu_placeholder():
    table = bench_prune.markdown_table(literal_results({"note": "no GPU run (--device cpu); this machine has no GPU"}))
    assert "**The kept counts are chosen for the benchmark**" in table
    assert f"`{bench_prune.DRY_RUN_COMMAND}`" in table and "--dry_run" in bench_prune.DRY_RUN_COMMAND
    assert "| full | 250,112 | 300.2M | 1,200 | 1.00 | 300 |" in table
    assert "| pruned-40000 | 40,000 | 85.0M | 330 | 0.28 | - |" in table
    assert "| pruned-40000 | ours | 1.50 | 150 | 2.67 | 2.93 | 180 | 16 |" in table
    assert ("- training samples/s vs the full model, our loop: x1.50 (rounds: 1.50, 1.20, 2.00); target >= x1.3: met"
            in table)
    assert "Seq2SeqTrainer (dynamic padding + group_by_length) on the full model: x1.20 (rounds: 1.36, 1.20, 1.00); " \
           "target >= x1.3: MISSED" in table
    assert "- beam-4 decoding speed-up, ct2 backend (int8): x1.50; target >= x2: MISSED" in table
    assert "| pruned-40000 | 1.000 | 0.400 | 800 | 400 | [64] |" in table
    assert "*Not measured here: no GPU run (--device cpu); this machine has no GPU.* Placeholder" in table
    assert "--device cuda --skip_cpu" in table

    gpu = {"summary": {name: {"device_name": "NVIDIA X", "total_s": t, "forward_s": t / 4, "backward_s": t / 2,
                              "optimizer_s": t / 4, "samples_per_s": 16 / t, "peak_gpu_allocated_mb": mb}
                       for name, t, mb in (("full", 0.2, 8192.0), ("pruned-40000", 0.1, 2048.0))}}
    table = bench_prune.markdown_table(literal_results(gpu))
    assert "NVIDIA X, batch 16, bf16 autocast" in table and "Placeholder" not in table
    assert "| pruned-40000 | 0.100 | 0.025 | 0.050 | 0.025 | 160.0 | 2.00 | 0.25 |" in table


def test_decoding_split_on_literal_figures_and_its_table():
    # full ct2: 0.60 s for 64 tokens, 0.09 s for 1 -> 0.51 s over 63 tokens = 8.1 ms each; pruned 0.40 / 0.085
    results = literal_results({"note": "no GPU run"})
    short = {"full/hf": 0.15, "full/ct2": 0.09, "pruned-40000/hf": 0.12, "pruned-40000/ct2": 0.085}
    split = bench_prune.decoding_split(results["inference"]["summary"], short, 64, 1)
    assert split["full/ct2"]["per_token_ms"] == pytest.approx(1000 * 0.51 / 63)
    assert split["full/ct2"]["prefix_share"] == pytest.approx(0.09 / 0.6)
    assert split["pruned-40000/hf"]["per_token_ms"] == pytest.approx(1000 * 0.88 / 63)
    with pytest.raises(ValueError, match="fewer forced tokens"):
        bench_prune.decoding_split(results["inference"]["summary"], short, 64, 64)
    results["settings"]["split_new_tokens"] = 1
    results["inference"]["split"] = split
    table = bench_prune.markdown_table(results)
    assert "**Where the decoding time goes**" in table
    assert "| full | 0.150 | 45.2 | 5% | 0.090 | 8.1 | 15% |" in table
    assert "ct2: pruning to 40,000 rows takes the cost of a token from 8.1 to 5.0 ms" in table
    assert "x1.50 over 64 tokens" in table  # 0.6 / 0.4: the split's two figures add up to the measured time
    assert "**Where the decoding time goes**" not in bench_prune.markdown_table(literal_results({"note": "x"}))
    # with 32 forced tokens in the short run the ratio is still the measured 0.6 / 0.4, not a re-derived one
    longer = bench_prune.decoding_split(results["inference"]["summary"], short, 64, 32)
    assert "x1.50 over 64 tokens" in bench_prune.decoding_ceiling_note(longer, 64)


# ----------------------------------------------------------------------------------------------------
# command line


def test_parse_args_defaults_and_refusals(capsys):
    args = bench_prune.parse_args([])
    assert args.kept == [20000, 40000, 60000] and bench_prune.VERDICT_KEPT in args.kept
    assert (args.batch_size, args.steps, args.warmup_steps, args.repeats) == tuple(
        bench_train.DEFAULTS["mt5-small"][k] for k in ("batch_size", "steps", "warmup_steps", "repeats"))
    assert args.device == "cpu" and not args.skip_cpu
    assert bench_prune.parse_args(["--kept", "60000", "20000", "20000"]).kept == [20000, 60000]
    for argv, message in ((["--kept", "16000"], "--kept 16000: must hold the benchmark tokenizer's 16,100 tokens"),
                          (["--kept", "250112"], "below the full 250,112 rows"),
                          (["--vocab_size", "32000", "--kept", "20000"], "must hold the benchmark tokenizer's 32,100"),
                          (["--skip_cpu"], "--skip_cpu leaves nothing to measure without --device cuda"),
                          (["--warmup_steps", "0"], "--warmup_steps and --gpu_warmup_steps must be >= 1"),
                          (["--num_articles", "0"], "--num_articles must be positive"),
                          (["--split_new_tokens", "64"], "--split_new_tokens must be >= 0 and below --new_tokens")):
        with pytest.raises(SystemExit) as exit_info:
            bench_prune.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

"""Training loop tests on a tiny mT5 (CPU): memorisation, exact resume, precision/checkpointing paths,
presets and argument errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import train_decoder
from conftest import REPO, read_rows, reset_accelerate_state, train_losses, write_jsonl
from parse_arg import ArgumentError, check_args, parse_args


def test_memorises_a_few_dozen_real_examples(tiny_run, tmp_path):
    argv = tiny_run(n_train=32, extra=["--max_train_steps", "160", "--optimizer", "adamw", "--learning_rate", "3e-3",
                                       "--per_device_train_batch_size", "8", "--logging_steps", "20",
                                       "--eval_on_start", "true"])
    assert train_decoder.main(argv) == 0
    out = tmp_path / "out"
    rows = read_rows(out)
    evals = [r for r in rows if "eval/rouge-l" in r]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 160
    assert evals[0]["eval/rouge-l"] < 30
    assert evals[-1]["eval/rouge-l"] > 90, evals[-1]
    assert losses[-1] < losses[0] / 5
    # the best export loads with from_pretrained and reproduces the memorised titles
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "best")
    tokenizer = AutoTokenizer.from_pretrained(out / "best")
    title_config = json.loads((out / "best" / "title_config.json").read_text(encoding="utf-8"))
    assert title_config["max_source_length"] == 64 and title_config["eval_preset"] == "greedy"
    assert model.generation_config.max_new_tokens == 24
    assert len(tokenizer) <= model.config.vocab_size
    assert (out / "learning_curve.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_run, tmp_path):
    # dropout on, accumulation 2, 3 optimizer steps per epoch: the stop at step 4 is mid-epoch
    common = dict(n_train=24, n_eval=4, config_overrides={"dropout_rate": 0.1})
    extra = ["--max_train_steps", "8", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
             "--logging_steps", "1", "--optimizer", "adamw", "--learning_rate", "1e-3", "--warmup_steps", "2",
             "--eval_max_new_tokens", "4"]
    assert train_decoder.main(tiny_run(out="full", extra=extra, **common)) == 0
    full = train_losses(tmp_path / "full")
    assert sorted(full) == list(range(1, 9))

    argv = tiny_run(out="resumed", extra=extra + ["--save_steps", "4"], **common)
    assert train_decoder.main(argv, stop_after_steps=4) == 0
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["step_4"]
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    resumed = train_losses(tmp_path / "resumed")
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), (step, resumed[step], full[step])


def test_bf16_autocast_is_active_in_the_forward_pass(tiny_run, tmp_path):
    """--mixed_precision bf16 on CPU: the training forward runs under autocast (lm_head computes in bf16)."""
    seen: list[torch.dtype] = []

    def model_with_probe(args, tokenizer):
        model = train_decoder.get_model_for_run(args, tokenizer)
        model.lm_head.register_forward_hook(
            lambda module, inputs, output: seen.append(output.dtype) if module.training else None)
        return model

    argv = tiny_run(n_train=16, n_eval=4, extra=["--max_train_steps", "2", "--mixed_precision", "bf16",
                                                 "--logging_steps", "1", "--per_device_train_batch_size", "4",
                                                 "--eval_max_new_tokens", "4"])
    assert train_decoder.main(argv, factories=train_decoder.Factories(model=model_with_probe)) == 0
    assert seen == [torch.bfloat16] * 2
    losses = train_losses(tmp_path / "out")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())

    seen.clear()  # control: without mixed precision the same forward computes in float32
    reset_accelerate_state()
    argv = tiny_run(n_train=16, n_eval=4, out="fp32", extra=["--max_train_steps", "1", "--eval_max_new_tokens", "4",
                                                             "--per_device_train_batch_size", "4"])
    assert train_decoder.main(argv, factories=train_decoder.Factories(model=model_with_probe)) == 0
    assert seen == [torch.float32]


def test_gradient_checkpointing_recomputes_activations(tiny_run):
    """With --gradient_checkpointing the inside of each encoder block runs twice per training step (forward,
    then the recomputation in backward), once without. (transformers checkpoints a block's ``forward``, so
    hooks on the block itself stay outside the checkpoint; its sub-layers see the recomputation.)"""
    calls: dict[str, int] = {}
    checkpointing: dict[str, bool] = {}

    def probe(label):
        def factory(args, tokenizer):
            model = train_decoder.get_model_for_run(args, tokenizer)
            checkpointing[label] = model.is_gradient_checkpointing
            model.encoder.block[0].layer[0].register_forward_hook(
                lambda module, inputs, output: calls.__setitem__(label, calls.get(label, 0) + module.training))
            return model
        return factory

    extra = ["--max_train_steps", "3", "--per_device_train_batch_size", "4", "--eval_max_new_tokens", "2",
             "--logging_steps", "1"]
    for label, flag in (("on", "true"), ("off", "false")):
        argv = tiny_run(n_train=12, n_eval=2, out=label, extra=extra + ["--gradient_checkpointing", flag])
        assert train_decoder.main(argv, factories=train_decoder.Factories(model=probe(label))) == 0
        reset_accelerate_state()
    assert checkpointing == {"on": True, "off": False}
    assert calls == {"on": 6, "off": 3}


def test_freeze_parts(tiny_tokenizer):
    from conftest import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    train_decoder.freeze_parts(model, ["encoder", "embeddings"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "shared.weight" in frozen and any(n.startswith("encoder.block") for n in frozen)
    assert not any(n.startswith("decoder.") for n in frozen) and "lm_head.weight" not in frozen


def test_lora_trains_only_the_adapters_and_exports_a_merged_model(tiny_run, tmp_path):
    from torch import nn
    from transformers import AutoModelForSeq2SeqLM

    from modeling import count_parameters

    rank = 4
    argv = tiny_run(n_train=16, n_eval=4, extra=["--max_train_steps", "3", "--use_lora", "true", "--lora_r", str(rank),
                                                 "--lora_target_modules", "q", "v", "--optimizer", "adamw",
                                                 "--learning_rate", "1e-2", "--per_device_train_batch_size", "4",
                                                 "--eval_max_new_tokens", "4"])
    args = parse_args(argv)
    check_args(args)
    trainer = train_decoder.build_trainer(args)
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    base = peft_model.get_base_model()
    targets = [m.base_layer for name, m in base.named_modules() if name.split(".")[-1] in ("q", "v")]
    assert len(targets) == 2 * 2 + 2 * 2 * 2  # q, v of 2 encoder self-attentions + 2 x 2 decoder attentions
    assert all(isinstance(m, nn.Linear) for m in targets)
    total, trainable = count_parameters(peft_model)
    assert trainable == sum(rank * (m.in_features + m.out_features) for m in targets)  # A [r, in] + B [out, r]
    assert trainable / total < 0.05
    before = {k.replace(".base_layer", ""): v.clone() for k, v in base.state_dict().items() if "lora_" not in k}
    trainer.train()

    exported = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out" / "best").state_dict()
    assert not any("lora" in k for k in exported) and set(exported) <= set(before)
    changed = sorted(k for k, v in exported.items() if not torch.equal(v, before[k]))
    assert changed and all(k.endswith((".q.weight", ".v.weight")) for k in changed), changed  # merged adapters


def test_every_shipped_training_preset_passes_the_checks(tmp_path, tiny_model_dir):
    """Each preset in configs/ opens with its command, parses, its values arrive unchanged, and check_args
    accepts it once the course files it names are replaced by the sample data (and the RL export by a
    tiny one)."""
    from conftest import data_file

    training = [p for p in sorted((REPO / "configs").glob("*.json"))
                if p.name not in ("generation_presets.json", "tiny-mt5.json")]
    assert {p.name for p in training} >= {"tiny-cpu.json", "mt5-small.json", "rl-tiny-cpu.json", "rl-mt5-small.json"}
    sample = str(data_file("lcsts_val.jsonl"))
    for preset in training:
        raw = json.loads(preset.read_text(encoding="utf-8"))
        assert raw["_usage"].startswith(f"bash train.sh configs/{preset.name}"), preset.name
        values = {k: v for group in parse_args([str(preset)]).to_dict().values() for k, v in group.items()}
        options = {k: v for k, v in raw.items() if not k.startswith("_")}
        assert {k: values[k] for k in options} == options, preset.name
        argv = [str(preset), "--train_file", sample, "--output_dir", str(tmp_path)]
        if not options.get("validation_split_percentage"):  # a preset that splits train.jsonl names no other file
            argv += ["--validation_file", sample]
        if preset.name.startswith("rl-"):
            argv += ["--rl_from", str(tiny_model_dir)]
        if str(raw.get("model_name_or_path", "")).startswith("outputs/"):  # a stage's own earlier export
            argv += ["--model_name_or_path", str(tiny_model_dir)]
        check_args(parse_args(argv))  # raises ArgumentError naming the flag if a value is invalid


def test_demo_stage_two_without_stage_one_says_what_to_run(tmp_path):
    """configs/tiny-cpu.json fine-tunes the demo's pretrained export: when that export is missing, the error
    names it and the command that makes it; a hub id (org/name) is not taken for a local path."""
    from conftest import data_file
    from parse_arg import looks_local

    sample = str(data_file("lcsts_val.jsonl"))
    argv = [str(REPO / "configs" / "tiny-cpu.json"), "--train_file", sample, "--validation_file", sample,
            "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "tiny-cpu-pretrain/best")]
    with pytest.raises(ArgumentError, match="no config.json.*bash train.sh configs/pretrain-tiny-cpu.json"):
        check_args(parse_args(argv))
    assert looks_local("outputs/tiny-cpu-pretrain/best") and looks_local("./m") and looks_local(str(tmp_path))
    assert not looks_local("google/mt5-small")


def test_preset_then_cli_override_order(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"_comment": "x", "learning_rate": 0.5, "num_train_epochs": 3}), encoding="utf-8")
    assert parse_args([]).train.learning_rate == 1e-3  # default
    assert parse_args([str(preset)]).train.learning_rate == 0.5  # preset over default
    args = parse_args([str(preset), "--learning_rate", "0.1"])  # flag over preset
    assert args.train.learning_rate == 0.1 and args.train.num_train_epochs == 3


@pytest.mark.parametrize("flags, message", [
    (["--train_file", "nope.jsonl"], "--train_file nope.jsonl: file not found"),
    (["--max_source_length", "0"], "--max_source_length must be > 0"),
    (["--per_device_train_batch_size", "-1"], "--per_device_train_batch_size must be > 0"),
    (["--mixed_precision", "fp16"], "refused for T5-family"),
    (["--mixed_precision", "fp8"], "--mixed_precision must be one of"),
    (["--freeze", "attention"], "--freeze takes any of"),
    (["--eval_preset", "beam99"], "'beam99' is not a preset"),
    (["--optimizer", "sgd"], "--optimizer must be one of"),
    (["--rl_gamma", "1.5"], "--rl_gamma must be in [0, 1]"),
])
def test_bad_arguments_fail_clearly(tiny_run, capsys, flags, message):
    assert train_decoder.main(tiny_run(n_train=4) + flags) == 2
    assert message in capsys.readouterr().err


def test_unknown_preset_key_and_fp16_force(tmp_path, tiny_run):
    preset = tmp_path / "bad.json"
    preset.write_text(json.dumps({"learning_rte": 0.1}), encoding="utf-8")
    with pytest.raises(ArgumentError, match="unknown option.*learning_rte"):
        parse_args([str(preset)])
    args = parse_args(tiny_run(n_train=4) + ["--mixed_precision", "fp16", "--force_fp16", "true"])
    check_args(args)  # forced: accepted


def test_missing_ckip_data_fails_before_training(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("TW_ROUGE_CKIP_DIR", raising=False)
    argv = tiny_run(n_train=4) + ["--segmenter", "ckip"]
    assert train_decoder.main(argv) == 2
    err = capsys.readouterr().err
    assert "python -m tw_rouge download" in err and str(tmp_path / "empty-cache") in err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_mt5_small_shape_trains_through_the_loop(tmp_path, tiny_tokenizer_dir, lcsts_train):
    """The published mt5-small shape (vocab 250112, untied lm_head, 300M parameters) from its config
    with random weights: two optimizer steps and an evaluation through the same loop."""
    from modeling import MT5_SMALL_CONFIG

    config = tmp_path / "mt5-small-config.json"
    config.write_text(json.dumps(MT5_SMALL_CONFIG), encoding="utf-8")
    data = write_jsonl(tmp_path / "train.jsonl", lcsts_train[:8])
    argv = ["--config_name", str(config), "--tokenizer_name", str(tiny_tokenizer_dir), "--train_file", str(data),
            "--validation_file", str(data), "--output_dir", str(tmp_path / "out"), "--segmenter", "char",
            "--max_source_length", "64", "--max_target_length", "16", "--per_device_train_batch_size", "4",
            "--max_train_steps", "2", "--logging_steps", "1", "--eval_max_new_tokens", "4",
            "--eval_every_epoch", "false", "--save_steps", "0", "--optimizer", "adamw", "--learning_rate", "1e-4"]
    torch.set_flush_denormal(True)
    assert train_decoder.main(argv) == 0
    losses = train_losses(tmp_path / "out")
    assert len(losses) == 2 and all(0 < v < 50 for v in losses.values())
    cfg = json.loads((tmp_path / "out" / "best" / "config.json").read_text(encoding="utf-8"))
    assert cfg["vocab_size"] == 250112 and cfg["d_model"] == 512 and cfg["tie_word_embeddings"] is False


def _train_sh(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HOME": str(cwd / "hf-home"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "train.sh"), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_train_sh_first_contact_errors_are_short_and_helpful(tmp_path):
    """A bad flag, a missing data file and the missing course data: exit 2, the error lines, no traceback
    (train.sh runs one process directly, not through the launcher)."""
    proc = _train_sh(["--train_file", "nope.jsonl", "--validation_file", "nope.jsonl"], tmp_path)
    assert proc.returncode == 2 and "--train_file nope.jsonl: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr

    proc = _train_sh([], tmp_path)  # the homework defaults: data/train.jsonl and data/public.jsonl
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for expected in ("data/train.jsonl", "data/public.jsonl", "bash train.sh configs/tiny-cpu.json"):
        assert expected in proc.stderr, proc.stderr

    proc = _train_sh(["--learning_rte", "1e-3"], tmp_path)
    assert proc.returncode == 2 and "unknown option(s) --learning_rte" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was created


@pytest.mark.slow
def test_train_sh_checks_once_before_launching_several_processes(tmp_path):
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n"
                      "num_machines: 1\nmixed_precision: 'no'\n", encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "maintext": "x", "title": "y"}\n{"id": 2, "maintext": \n', encoding="utf-8")
    proc = _train_sh(["--train_file", str(bad), "--validation_file", str(bad), "--segmenter", "char"], tmp_path,
                     ACCELERATE_CONFIG_FILE=str(config))
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:2: malformed JSON" in proc.stderr and proc.stderr.count("error:") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("config, launch", [
    ({}, False), ({"distributed_type": "NO", "num_processes": 1}, False),
    ({"distributed_type": "MULTI_GPU", "num_processes": 1}, False),
    ({"distributed_type": "MULTI_GPU", "num_processes": 4}, True), ({"distributed_type": "DEEPSPEED"}, True),
    ({"distributed_type": "FSDP", "num_processes": 2}, True),
])
def test_needs_launcher(config, launch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("needs_launcher", REPO / "scripts" / "needs_launcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.needs_launcher(config) is launch


def test_console_rows_keep_small_floats_significant():
    row = {"step": 5, "train/lr": 5e-05, "rl/lr": 1e-05, "train/loss": 4.61234, "eval/rouge-1": 14.8734}
    assert train_decoder.format_row(row) == ("step=5, train/lr=5e-05, rl/lr=1e-05, train/loss=4.612, "
                                             "eval/rouge-1=14.87")


def test_the_export_carries_the_decoding_strategy_selected_on_validation(tiny_run, tmp_path, lcsts_val):
    """--select_generation_presets scores each preset with best/ and makes the winner the export's own
    strategy; run.sh then decodes with it, and PRESET overrides it."""
    from export import TitleConfig
    from generation import load_presets

    argv = tiny_run(n_train=24, n_eval=12, extra=["--max_train_steps", "30", "--optimizer", "adamw",
                                                  "--learning_rate", "3e-3", "--per_device_train_batch_size", "8",
                                                  "--select_generation_presets", "greedy", "beam4_norepeat"])
    assert train_decoder.main(argv) == 0
    best = tmp_path / "out" / "best"
    exported = TitleConfig.load(best)
    assert set(exported.preset_scores) == {"greedy", "beam4_norepeat"}
    winner = max(exported.preset_scores, key=lambda n: exported.preset_scores[n]["eval/rouge-sum"])
    assert exported.generation_preset == winner and "selected after training" in exported.generation_preset_reason
    assert exported.metrics == exported.preset_scores[winner]
    saved = json.loads((best / "generation_config.json").read_text(encoding="utf-8"))
    for field, value in load_presets()[winner].items():
        assert saved.get(field, {"early_stopping": False, "no_repeat_ngram_size": 0}.get(field)) == value, field
    assert "(selected)" in (tmp_path / "out" / "preset_selection.md").read_text(encoding="utf-8")

    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "maintext": r["maintext"]} for r in lcsts_val[:6]])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for preset in ("", winner, "greedy" if winner != "greedy" else "beam4_norepeat"):
        out = tmp_path / f"out-{preset or 'own'}.jsonl"
        proc = subprocess.run(["bash", str(REPO / "run.sh"), str(inp), str(out), str(best)], capture_output=True,
                              text=True, env={**env, "PRESET": preset}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs[preset or "own"] = (out.read_text(encoding="utf-8"), proc.stderr)
    assert f"preset {winner} (the export's own: selected after training" in outputs["own"][1]
    assert outputs["own"][0] == outputs[winner][0]  # the export's own strategy is the selected preset
    other = "greedy" if winner != "greedy" else "beam4_norepeat"
    assert f"preset {other} (named by --preset / PRESET)" in outputs[other][1]

"""Training options of issue #15 on a tiny mT5 (CPU): peft prompt tuning and its export (run.sh, --sweep, the
ct2 refusal), the validation split held out of the training file by id, early stopping (and a resume that
stops at the same step), the model card best/README.md, and the --torch_compile refusal without CUDA."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess

import pytest
import torch

import predict
import train_decoder
from conftest import REPO, TINY_MT5, read_jsonl, read_rows, reset_accelerate_state, write_jsonl
from data_io import split_by_id
from export import TitleConfig, load_model
from parse_arg import ArgumentError, check_args, parse_args, resume_differences

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--optimizer", "adamw", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--eval_max_new_tokens", "6", "--select_generation_presets", "none"]


def without_validation_file(argv: list[str]) -> list[str]:
    i = argv.index("--validation_file")
    return argv[:i] + argv[i + 2:]


# ----------------------------------------------------------------------------------------------- prompt tuning

def test_prompt_tuning_trains_only_the_soft_prompt_and_its_export_predicts(tiny_run, tmp_path, tiny_tokenizer):
    from peft import PeftModel

    from modeling import count_parameters

    tokens, text = 6, "新闻标题"
    argv = tiny_run(n_train=16, n_eval=6, extra=FAST + [
        "--max_train_steps", "4", "--learning_rate", "0.3", "--peft_method", "prompt_tuning",
        "--num_virtual_tokens", str(tokens), "--prompt_tuning_init", "text", "--prompt_tuning_init_text", text])
    args = parse_args(argv)
    check_args(args)
    assert not args.model.use_lora
    trainer = train_decoder.build_trainer(args)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(model, PeftModel)
    total, trainable = count_parameters(model)
    assert trainable == tokens * TINY_MT5["d_model"]  # the soft prompt only: [num_virtual_tokens, d_model]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
    assert total == count_parameters(model.get_base_model())[0] + trainable  # frozen base + prompt
    # TEXT initialisation: the prompt starts as the embeddings of the text's tokens, repeated to its length
    ids = tiny_tokenizer(text)["input_ids"]
    ids = (ids * tokens)[:tokens]
    prompt = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(prompt.detach(), model.get_base_model().shared.weight[ids].detach())
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    prompt_before = prompt.detach().clone()
    trainer.train()
    assert not torch.equal(prompt.detach(), prompt_before)
    assert all(torch.equal(v, base_before[k]) for k, v in model.get_base_model().state_dict().items())

    best = tmp_path / "out" / "best"
    assert TitleConfig.load(best).prompt_adapter == "prompt_adapter"
    assert (best / "prompt_adapter" / "adapter_config.json").is_file() and (best / "model.safetensors").is_file()
    loaded = load_model(best)
    assert isinstance(loaded, PeftModel)
    from transformers import AutoModelForSeq2SeqLM

    batch = tiny_tokenizer(["台北市长选举"], return_tensors="pt")
    labels = tiny_tokenizer(["选举"], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the soft prompt is applied: the logits differ from the base model's alone
        with_prompt = loaded(**batch, labels=labels).logits
        base_only = AutoModelForSeq2SeqLM.from_pretrained(best).eval()(**batch, labels=labels).logits
    assert not torch.allclose(with_prompt, base_only)

    # run.sh reproduces the titles the export was scored on (peft's generate with the soft prompt)
    scored = read_jsonl(best / "eval_predictions.jsonl")
    eval_file = next(tmp_path.glob("eval_*.jsonl"))
    articles = [{"id": r["id"], "maintext": r["maintext"]} for r in read_jsonl(eval_file)]
    inp = write_jsonl(tmp_path / "in.jsonl", articles)
    proc = subprocess.run(["bash", str(REPO / "run.sh"), str(inp), str(tmp_path / "pred.jsonl"), str(best)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(tmp_path / "pred.jsonl") == scored

    ref = write_jsonl(tmp_path / "ref.jsonl", read_jsonl(eval_file))
    assert predict.main(["--model_dir", str(best), "--sweep", "greedy", "beam4", "--reference", str(ref),
                         "--output_dir", str(tmp_path / "sweep"), "--segmenter", "char"]) == 0
    assert read_jsonl(tmp_path / "sweep" / "greedy.jsonl") == scored
    assert len(read_jsonl(tmp_path / "sweep" / "beam4.jsonl")) == len(scored)


def test_ct2_backend_refuses_a_prompt_tuned_export(tmp_path, tiny_model_dir, capsys):
    import shutil

    from peft import PromptTuningConfig, TaskType, get_peft_model

    from export import write_export

    model = get_peft_model(load_model(tiny_model_dir), PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3, num_transformer_submodules=1))
    from modeling import get_tokenizer

    config = TitleConfig(prompt_adapter="prompt_adapter")
    export = write_export(tmp_path / "export", model, get_tokenizer(str(tiny_model_dir)),
                          model.get_base_model().generation_config, config)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "maintext": "台北"}])
    for mode in (["--input_file", str(inp), "--output_file", str(tmp_path / "o.jsonl")],
                 ["--sweep", "greedy", "--reference", str(inp), "--output_dir", str(tmp_path / "s")]):
        assert predict.main(["--model_dir", str(export), "--backend", "ct2", *mode]) == 2
        err = capsys.readouterr().err
        assert "CTranslate2 cannot represent a soft prompt" in err and "use --backend hf" in err
    assert not (tmp_path / "o.jsonl").exists() and not any(export.glob("ct2-*"))
    import package_model  # the archive holds flat files: it would leave the prompt behind

    assert package_model.main([str(export), "--output", str(tmp_path / "m.tar.gz"), "--lock",
                               str(tmp_path / "model.lock")]) == 2
    assert "a prompt-tuned export keeps its soft prompt" in capsys.readouterr().err
    assert not (tmp_path / "m.tar.gz").exists()
    shutil.rmtree(export / "prompt_adapter")  # a copy that lost its prompt is refused, not decoded without it
    assert predict.main(["--model_dir", str(export), "--input_file", str(inp), "--output_file",
                         str(tmp_path / "o.jsonl")]) == 2
    assert "without its soft prompt" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--use_lora", "true", "--peft_method", "prompt_tuning"], "cannot be combined with --peft_method prompt_tuning"),
    (["--peft_method", "prefix"], "--peft_method must be one of none, lora, prompt_tuning"),
    (["--peft_method", "prompt_tuning", "--num_virtual_tokens", "0"], "--num_virtual_tokens must be > 0"),
    (["--peft_method", "prompt_tuning", "--prompt_tuning_init", "text"], "needs --prompt_tuning_init_text"),
    (["--validation_split_percentage", "100"], "--validation_split_percentage must be in [0, 100)"),
    (["--validation_split_percentage", "10"], "both give validation data: choose one"),
    (["--early_stopping_patience", "-1"], "--early_stopping_patience and --early_stopping_threshold must be >= 0"),
])
def test_bad_training_options_fail_clearly(tiny_run, capsys, flags, message):
    assert train_decoder.main(tiny_run(n_train=4) + flags) == 2
    assert message in capsys.readouterr().err


def test_prompt_tuning_and_the_rl_stage_are_refused_together(tiny_run, tiny_model_dir, tmp_path):
    argv = tiny_run(n_train=4) + ["--rl_from", str(tiny_model_dir), "--peft_method", "prompt_tuning"]
    with pytest.raises(ArgumentError, match="--peft_method prompt_tuning cannot be combined with --rl_from"):
        check_args(parse_args(argv))
    prompt_export = tmp_path / "prompt_export"
    (prompt_export / "prompt_adapter").mkdir(parents=True)
    (prompt_export / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ArgumentError, match="a prompt-tuned export .* cannot start the RL stage"):
        check_args(parse_args(tiny_run(n_train=4) + ["--rl_from", str(prompt_export)]))
    args = parse_args(tiny_run(n_train=4) + ["--use_lora", "true"])
    check_args(args)
    assert args.model.peft_method == "lora" and args.model.use_lora  # the old flag is the alias of lora


# ----------------------------------------------------------------------------------------------- validation split

def test_validation_split_is_disjoint_by_id_reproducible_and_sized(lcsts_train):
    records = [dict(r) for r in lcsts_train[:300]]
    records += [{**r, "title": r["title"] + "（二）"} for r in records[:40:4]]  # ten ids with two records each
    distinct = len({r["id"] for r in records})
    train, val = split_by_id(records, 10, seed=42)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in val})
    assert len({r["id"] for r in val}) == round(0.1 * distinct) == 30
    assert sorted(map(json.dumps, train + val)) == sorted(map(json.dumps, records))  # nothing lost or doubled
    assert [r for r in records if r in val] == val  # file order kept
    assert split_by_id(records, 10, seed=42) == (train, val)
    assert split_by_id(list(reversed(records)), 10, seed=42)[1] == list(reversed(val))  # not by file position
    other = split_by_id(records, 10, seed=7)[1]
    assert {r["id"] for r in other} != {r["id"] for r in val}
    assert len(split_by_id(records, 25, seed=42)[1]) >= round(0.25 * distinct)


def test_training_holds_the_split_out_and_logs_both_sizes(tiny_run, caplog):
    argv = without_validation_file(tiny_run(n_train=40)) + ["--validation_split_percentage", "25"]
    args = parse_args(argv)
    check_args(args)
    assert args.data.validation_file is None
    with caplog.at_level(logging.INFO, logger="train_decoder"):
        train, val = train_decoder.load_records(args)
    assert len(val) == 10 and len(train) == 30
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in val})
    assert "10 of 40 articles" in caplog.text and "25% of the ids, seed 42), 30 left for training" in caplog.text
    args.train.seed = 43
    assert {r["id"] for r in train_decoder.load_records(args)[1]} != {r["id"] for r in val}
    # without the split the course's public file stays the default
    default = parse_args([])
    assert check_default_validation(default) == "data/public.jsonl"


def check_default_validation(args) -> str:
    from parse_arg import validation_source_problems

    assert validation_source_problems(args.data) == []
    return args.data.validation_file


def test_resume_refuses_a_changed_split(tiny_run):
    base = without_validation_file(tiny_run(n_train=8)) + ["--validation_split_percentage", "25"]
    saved = parse_args(base).to_dict()
    changed = resume_differences(saved, parse_args(base + ["--validation_split_percentage", "20"]))
    assert changed["refused"] == ["validation_split_percentage: 25.0 -> 20.0"]
    assert resume_differences(saved, parse_args(base + ["--seed", "1"]))["refused"] == ["seed: 42 -> 1"]
    prompt = resume_differences(saved, parse_args(base + ["--peft_method", "prompt_tuning"]))
    assert prompt["refused"] == ["peft_method: 'none' -> 'prompt_tuning'"]
    plain = tiny_run(n_train=8)  # without a split a new seed only changes the data order
    changed = resume_differences(parse_args(plain).to_dict(), parse_args(plain + ["--seed", "1"]))
    assert changed["not_exact"] == ["seed: 42 -> 1"] and not changed["refused"]


def test_the_homework_preset_splits_train_jsonl():
    args = parse_args(["configs/mt5-small.json"])
    assert args.data.validation_split_percentage > 0 and args.data.validation_file is None


# ----------------------------------------------------------------------------------------------- early stopping

def test_early_stopping_stops_after_patience_and_a_resumed_run_stops_at_the_same_step(tiny_run, tmp_path, caplog):
    # a threshold no evaluation can beat: after the first evaluation (step 2), 4 and 6 count as no improvement
    # (best/ still takes a better model, only the patience counts them as nothing)
    extra = FAST + ["--max_train_steps", "20", "--eval_steps", "2", "--learning_rate", "1e-3",
                    "--early_stopping_patience", "2", "--early_stopping_threshold", "1000"]
    with caplog.at_level(logging.INFO, logger="train_decoder"):
        assert train_decoder.main(tiny_run(n_train=16, n_eval=4, out="full", extra=extra)) == 0
    best_step = TitleConfig.load(tmp_path / "full" / "best").step
    assert re.search(r"early stopping at step 6: 2 evaluations without an improvement of rouge-sum by more than "
                     rf"1000; best [\d.]+ at step {best_step}\n", caplog.text)
    full = read_rows(tmp_path / "full")
    assert max(r["step"] for r in full) == 6
    assert [r["step"] for r in full if "eval/rouge-sum" in r] == [2, 4, 6]

    reset_accelerate_state()
    argv = tiny_run(n_train=16, n_eval=4, out="resumed", extra=extra + ["--save_steps", "4"])
    assert train_decoder.main(argv, stop_after_steps=4) == 0  # interrupted after one evaluation without improvement
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step_4" / "training_state.json").read_text())
    assert state["evaluations_without_improvement"] == 1 and state["stopped_early_at"] is None
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    resumed = read_rows(tmp_path / "resumed")
    assert max(r["step"] for r in resumed) == 6
    final = json.loads((tmp_path / "resumed" / "checkpoints" / "step_6" / "training_state.json").read_text())
    assert final["stopped_early_at"] == 6 and final["best_step"] == best_step
    def scores(rows):
        return {r["step"]: r["eval/rouge-sum"] for r in rows if "eval/rouge-sum" in r}

    assert scores(resumed) == pytest.approx(scores(full))
    # resuming the finished run does not train on
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    assert max(r["step"] for r in read_rows(tmp_path / "resumed")) == 6


def test_without_patience_training_runs_to_the_end(tiny_run, tmp_path):
    extra = FAST + ["--max_train_steps", "6", "--eval_steps", "2", "--early_stopping_threshold", "1000"]
    assert train_decoder.main(tiny_run(n_train=16, n_eval=4, extra=extra)) == 0
    assert max(r["step"] for r in read_rows(tmp_path / "out")) == 6


# ----------------------------------------------------------------------------------------------- model card

def front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_model_card_holds_the_runs_numbers(tiny_run, tmp_path):
    argv = without_validation_file(tiny_run(n_train=20, extra=[
        "--optimizer", "adamw", "--per_device_train_batch_size", "4", "--eval_max_new_tokens", "6",
        "--max_train_steps", "6", "--learning_rate", "3e-3", "--validation_split_percentage", "25",
        "--select_generation_presets", "greedy", "beam2"]))
    args = parse_args(argv)
    check_args(args)
    trainer = train_decoder.build_trainer(args)
    trainer.train()
    best = tmp_path / "out" / "best"

    def check(card: str, exported: TitleConfig) -> None:
        meta = front_matter(card)
        assert meta["language"] == ["zh"] and meta["pipeline_tag"] == "summarization" and "license" in meta
        assert "base_model" not in meta  # trained from scratch
        values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
        assert values == {k: round(exported.metrics[f"eval/{k}"], 4) for k in ("rouge-1", "rouge-2", "rouge-l")}
        row = " | ".join(f"{exported.metrics[f'eval/{k}']:.2f}" for k in ("rouge-1", "rouge-2", "rouge-l"))
        assert f"| {row} |" in card and f"the `{exported.segmenter}` segmenter" in card
        assert f"Preset **{exported.generation_preset}**" in card and exported.generation_preset_reason in card
        assert "- training: `" in card and "15 articles" in card
        assert "25% of train_20.jsonl held out by id (seed 42; never trained on), 5 articles" in card
        assert '- source prefix: ""' in card and "- max_source_length: 64 tokens" in card
        assert f"bash run.sh input.jsonl output.jsonl {best}" in card
        assert "python train_decoder.py " + " ".join(argv) in card
        for heading in ("Model description", "Training data", "Preprocessing", "Training hyperparameters",
                        "Decoding strategy", "Validation scores", "How to use", "The command that made it"):
            assert f"\n## {heading}\n" in card

    exported = TitleConfig.load(best)
    card = (best / "README.md").read_text(encoding="utf-8")
    check(card, exported)
    assert exported.generation_preset == "greedy" and f"model of step {exported.step}" in card
    winner = trainer.select_generation_preset()
    selected = TitleConfig.load(best)
    card = (best / "README.md").read_text(encoding="utf-8")
    check(card, selected)  # rewritten with the selected strategy and its scores
    assert selected.generation_preset == winner and "selected after training" in card
    assert "| beam2 |" in card and "| greedy |" in card


# ----------------------------------------------------------------------------------------------- torch.compile

def test_torch_compile_is_refused_without_cuda(tiny_run, capsys, monkeypatch):
    assert not torch.cuda.is_available()
    assert train_decoder.main(tiny_run(n_train=4) + ["--torch_compile", "true"]) == 2
    err = capsys.readouterr().err
    assert "--torch_compile needs a CUDA GPU" in err and "does not help" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # with CUDA the flag is accepted
    check_args(parse_args(tiny_run(n_train=4) + ["--torch_compile", "true"]))


def test_prompt_tuning_a_pruned_model(tiny_model_dir, lcsts_train, tmp_path, tiny_tokenizer, capsys):
    """--prune_vocabulary then --peft_method prompt_tuning: the soft prompt is trained on the pruned model,
    and its export predicts; prune_vocab.py refuses a prompt-tuned export (its prompt would be left behind)."""
    import prune_vocab

    train = write_jsonl(tmp_path / "train.jsonl", lcsts_train[:24])
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--prune_vocabulary", "true", "--train_file", str(train),
            "--validation_split_percentage", "25", "--output_dir", str(out), "--segmenter", "char",
            "--max_train_steps", "3", "--max_source_length", "64", "--max_target_length", "16", "--save_steps", "0",
            "--eval_every_epoch", "false", "--peft_method", "prompt_tuning", "--num_virtual_tokens", "4", *FAST]
    assert train_decoder.main(argv) == 0
    info = json.loads((out / "pruned_model" / "prune_info.json").read_text(encoding="utf-8"))
    best = out / "best"
    model = load_model(best)
    assert model.get_base_model().config.vocab_size == info["kept_rows"] < len(tiny_tokenizer)
    assert model.prompt_encoder["default"].embedding.weight.shape == (4, TINY_MT5["d_model"])
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "maintext": r["maintext"]} for r in lcsts_train[:3]])
    assert predict.main(["--model_dir", str(best), "--input_file", str(inp), "--output_file",
                         str(tmp_path / "o.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 3
    capsys.readouterr()
    assert prune_vocab.main(["--model_name_or_path", str(best), "--corpus", str(train), "--output_dir",
                             str(tmp_path / "pruned_again")]) == 2
    assert "prune the pretrained model before prompt tuning" in capsys.readouterr().err

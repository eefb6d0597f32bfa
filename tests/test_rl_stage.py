"""The RL stage wired into the training loop: starts from a supervised export, reports the supervised
score before the first step, logs rl/* statistics, keeps the best by validation ROUGE, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_decoder
from conftest import write_jsonl


def rl_argv(tmp_path: Path, export: Path, records: list[dict], out: str, extra=()) -> list[str]:
    data = write_jsonl(tmp_path / "rl_train.jsonl", records)
    return ["--rl_from", str(export), "--train_file", str(data), "--validation_file", str(data),
            "--output_dir", str(tmp_path / out), "--segmenter", "char", "--max_source_length", "48",
            "--max_target_length", "12", "--per_device_train_batch_size", "4", "--rl_num_samples", "2",
            "--optimizer", "adamw", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--eval_every_epoch", "false", "--max_train_steps", "4", "--eval_steps", "2",
            "--rl_gamma", "0.9", *extra]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_rl_stage_logs_supervised_score_first_and_rl_statistics(tmp_path, tiny_model_dir, lcsts_train):
    assert train_decoder.main(rl_argv(tmp_path, tiny_model_dir, lcsts_train[:12], "rl", ["--save_steps", "0"])) == 0
    out = tmp_path / "rl"
    metrics = rows(out)
    evals = [r for r in metrics if "eval/rouge-1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]  # the supervised score comes before the first RL step
    train_rows = [r for r in metrics if "train/loss" in r]
    assert len(train_rows) == 4
    for key in ("rl/sample_reward", "rl/greedy_reward", "rl/advantage", "rl/zero_advantage_frac",
                "rl/sample_length"):
        assert all(key in r for r in train_rows), key
    assert all(0.0 <= r["rl/sample_reward"] <= 1.0 for r in train_rows)
    # the best export is chosen by validation ROUGE, never by the RL loss
    best = json.loads((out / "best" / "title_config.json").read_text(encoding="utf-8"))
    best_score = max(r["eval/rouge-sum"] for r in evals)
    assert best["metrics"]["eval/rouge-sum"] == pytest.approx(best_score)
    assert best["step"] == next(r["step"] for r in evals if r["eval/rouge-sum"] == best_score)
    assert (out / "learning_curve.png").exists()


def test_rl_stage_resumes_exactly(tmp_path, tiny_model_dir, lcsts_train):
    records = lcsts_train[:12]
    assert train_decoder.main(rl_argv(tmp_path, tiny_model_dir, records, "full", ["--save_steps", "0"])) == 0
    argv = rl_argv(tmp_path, tiny_model_dir, records, "resumed", ["--save_steps", "2"])
    assert train_decoder.main(argv, stop_after_steps=2) == 0
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    full = {r["step"]: r for r in rows(tmp_path / "full") if "train/loss" in r}
    resumed = {r["step"]: r for r in rows(tmp_path / "resumed") if "train/loss" in r}
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):  # after the resume: same samples (RNG restored), same rewards, same loss
        assert resumed[step]["rl/sample_reward"] == pytest.approx(full[step]["rl/sample_reward"], abs=1e-9)
        assert resumed[step]["train/loss"] == pytest.approx(full[step]["train/loss"], rel=1e-5, abs=1e-6)


def test_rl_stage_kl_anchor_degeneration_metrics_and_timings(tmp_path, tiny_model_dir, lcsts_train):
    from safetensors.torch import load_file

    before = load_file(str(tiny_model_dir / "model.safetensors"))
    argv = rl_argv(tmp_path, tiny_model_dir, lcsts_train[:12], "kl", ["--save_steps", "0", "--rl_kl_coef", "0.5"])
    assert train_decoder.main(argv) == 0
    metrics = rows(tmp_path / "kl")
    train_rows = [r for r in metrics if "train/loss" in r]
    assert train_rows[0]["rl/kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is still the reference
    assert all(r["rl/kl"] > 0 for r in train_rows[1:])
    for key in ("rl/time_rollout_s", "rl/time_reward_s", "rl/time_logprob_s", "rl/time_update_s"):
        assert all(r[key] >= 0 for r in train_rows), key
    evals = [r for r in metrics if "eval/rouge-1" in r]
    for key in ("eval/gen_len", "eval/distinct_1", "eval/distinct_2", "eval/repeat_3gram_frac"):
        assert all(key in r for r in evals), key
    after = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the reference export is never written


def test_the_reward_sees_the_articles(tmp_path, tiny_model_dir, lcsts_train, monkeypatch):
    import rewards

    seen: list[list[str]] = []

    def recording(segmenter=None, weights=None, ckip_dir=None):
        def reward(sources, preds, refs):
            seen.append(list(sources))
            return [0.0] * len(preds)
        return reward

    monkeypatch.setitem(rewards.REWARDS, "recording", recording)
    records = lcsts_train[:12]
    argv = rl_argv(tmp_path, tiny_model_dir, records, "src", ["--save_steps", "0", "--rl_reward", "recording",
                                                              "--max_train_steps", "2"])
    assert train_decoder.main(argv) == 0
    articles = {r["maintext"] for r in records}
    assert len(seen) == 2 and all(len(s) == 4 * 2 + 4 for s in seen)  # 2 samples + 1 greedy for 4 articles
    assert all(set(s) <= articles for s in seen)


def test_the_control_trains_supervised_from_the_same_start(tmp_path, tiny_model_dir, lcsts_train):
    records = lcsts_train[:12]
    assert train_decoder.main(rl_argv(tmp_path, tiny_model_dir, records, "rl", ["--save_steps", "0"])) == 0
    assert train_decoder.main(rl_argv(tmp_path, tiny_model_dir, records, "control",
                                      ["--save_steps", "0", "--rl_control", "true"])) == 0
    rl_rows, control_rows = rows(tmp_path / "rl"), rows(tmp_path / "control")
    first_rl, first_control = (next(r for r in rs if "eval/rouge-1" in r) for rs in (rl_rows, control_rows))
    assert first_control["step"] == first_rl["step"] == 0
    assert first_control["eval/rouge-sum"] == first_rl["eval/rouge-sum"]  # the same start, scored the same
    control_train = [r for r in control_rows if "train/loss" in r]
    assert [r["step"] for r in control_train] == [r["step"] for r in rl_rows if "train/loss" in r]  # same budget
    assert not any(k.startswith("rl/") for r in control_train for k in r)  # no rollouts: the supervised loss
    assert [r["train/lr"] for r in control_train] == [r["train/lr"] for r in rl_rows if "train/loss" in r]


def test_degeneration_guard_keeps_drifted_titles_from_becoming_the_best(tmp_path, tiny_model_dir, lcsts_train,
                                                                         monkeypatch):
    # scripted scores for the evaluations at steps 0, 2, 4: step 2 has the highest ROUGE but titles 30% longer
    # than the start's; step 4 is better than the start and within 10% on both statistics
    scripted = {0: (20.0, 10.0, 0.20), 2: (30.0, 13.0, 0.20), 4: (25.0, 10.5, 0.21)}  # by step

    def score_titles(self, preds):
        rouge, length, repeated = scripted[self.state.completed_steps]
        return {"eval/rouge-1": rouge, "eval/rouge-2": 0.0, "eval/rouge-l": 0.0, "eval/rouge-sum": rouge,
                "eval/gen_len": length, "eval/distinct_1": 0.5, "eval/distinct_2": 0.5,
                "eval/repeat_3gram_frac": repeated, "eval/distinct_titles": 1.0}

    monkeypatch.setattr(train_decoder.Trainer, "score_titles", score_titles)
    argv = rl_argv(tmp_path, tiny_model_dir, lcsts_train[:12], "guard",
                   ["--save_steps", "0", "--rl_degeneration_tolerance", "0.1"])
    assert train_decoder.main(argv) == 0
    evals = [r for r in rows(tmp_path / "guard") if "eval/rouge-1" in r]
    assert [(r["step"], r["eval/degenerate"]) for r in evals] == [(0, 0.0), (2, 1.0), (4, 0.0)]
    best = json.loads((tmp_path / "guard" / "best" / "title_config.json").read_text(encoding="utf-8"))
    assert best["step"] == 4 and best["metrics"]["eval/rouge-sum"] == 25.0

    assert train_decoder.main(rl_argv(tmp_path, tiny_model_dir, lcsts_train[:12], "plain", ["--save_steps", "0"])) == 0
    best = json.loads((tmp_path / "plain" / "best" / "title_config.json").read_text(encoding="utf-8"))
    assert best["step"] == 2  # the same scores without the guard


def test_degeneration_guard_needs_an_rl_start(tmp_path, lcsts_train):
    from parse_arg import ArgumentError, check_args, parse_args

    data = write_jsonl(tmp_path / "train.jsonl", lcsts_train[:4])
    with pytest.raises(ArgumentError, match="--rl_degeneration_tolerance needs --rl_from"):
        check_args(parse_args(["--train_file", str(data), "--output_dir", str(tmp_path / "o"),
                               "--rl_degeneration_tolerance", "0.1"]))

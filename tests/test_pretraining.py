"""The pretraining objectives: T5 span corruption and BART text infilling on literal inputs (sentinel order,
noise density, mean span length), the per-epoch corruption dataset, and pretraining through the loop
(validated by loss, resumed exactly, then fine-tuned from its export)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

import train_decoder
from conftest import read_rows, reset_accelerate_state, train_losses, write_jsonl
from pretraining import CorruptedTexts, poisson_span_mask, random_spans_noise_mask, span_corruption, text_infilling

SENTINELS = list(range(1000, 1100))  # stand-ins for <extra_id_0> .. <extra_id_99>
MASK = 999


def spans(mask: list[bool]) -> list[tuple[int, int]]:
    """(start, length) of every run of True."""
    found, start = [], None
    for i, m in enumerate(mask + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            found.append((start, i - start))
            start = None
    return found


# ------------------------------------------------------------------------------------ span corruption

def test_span_corruption_by_hand(monkeypatch):
    import pretraining

    ids = [10, 11, 12, 13, 14, 15, 16]  # a b c d e f g; noise spans "c d" and "g"
    fixed = [False, False, True, True, False, False, True]
    monkeypatch.setattr(pretraining, "random_spans_noise_mask", lambda *a: fixed)
    inputs, targets = pretraining.span_corruption(ids, 0.15, 3.0, SENTINELS, np.random.default_rng(0))
    assert inputs == [10, 11, SENTINELS[0], 14, 15, SENTINELS[1]]
    assert targets == [SENTINELS[0], 12, 13, SENTINELS[1], 16]


@pytest.mark.parametrize("length", [2, 7, 20, 64, 200])
def test_noise_mask_has_the_papers_density_and_span_count(length):
    for seed in range(20):
        mask = random_spans_noise_mask(length, 0.15, 3.0, np.random.default_rng(seed))
        noise = sum(mask)
        assert len(mask) == length and not mask[0]  # T5 never starts with noise
        assert noise == min(max(round(length * 0.15), 1), length - 1)
        assert len(spans(mask)) == min(max(round(noise / 3.0), 1), noise, length - noise)


def test_span_corruption_keeps_every_token_and_numbers_sentinels_in_order():
    rng = np.random.default_rng(0)
    span_lengths = []
    for _ in range(200):
        ids = list(rng.integers(3, 900, size=int(rng.integers(10, 150))))
        inputs, targets = span_corruption(ids, 0.15, 3.0, SENTINELS, rng)
        used = [t for t in inputs if t in SENTINELS]
        assert used == SENTINELS[: len(used)] and [t for t in targets if t in SENTINELS] == used
        # the original, rebuilt: each sentinel of the inputs replaced by its span from the targets
        pieces, current = {}, None
        for t in targets:
            if t in SENTINELS:
                current = t
                pieces[current] = []
            else:
                pieces[current].append(t)
        rebuilt = [x for t in inputs for x in (pieces[t] if t in SENTINELS else [t])]
        assert rebuilt == ids
        noise = sum(len(p) for p in pieces.values())
        assert noise == max(round(len(ids) * 0.15), 1)
        assert len(inputs) == len(ids) - noise + len(used) and len(targets) == noise + len(used)
        span_lengths += [len(p) for p in pieces.values()]
    assert statistics.mean(span_lengths) == pytest.approx(3.0, abs=0.35)  # the mean span length asked for


# ----------------------------------------------------------------------------------- text infilling

def test_text_infilling_replaces_each_span_by_one_mask_and_targets_the_original():
    rng = np.random.default_rng(1)
    masked_share, lengths = [], []
    for _ in range(300):
        ids = list(rng.integers(3, 900, size=100))
        state = rng.bit_generator.state
        masked, insertions = poisson_span_mask(len(ids), 0.3, 3.0, rng)
        rng.bit_generator.state = state  # the same draw again, through text_infilling
        inputs, targets = text_infilling(ids, MASK, rng, 0.3, 3.0)
        assert targets == ids
        expected = []
        for i, tok in enumerate(ids):
            if i in insertions:
                expected.append(MASK)
            if not masked[i]:
                expected.append(tok)
            elif i == 0 or not masked[i - 1]:
                expected.append(MASK)  # one mask per masked run, however long
        assert inputs == expected + ([MASK] if len(ids) in insertions else [])
        assert [t for t in inputs if t != MASK] == [t for t, m in zip(ids, masked) if not m]  # order kept
        masked_share.append(sum(masked) / len(ids))
        lengths += [n for _, n in spans(masked)]
    # spans start at random places and may merge or overlap, so the share is at most the ratio asked for
    assert 0.22 < statistics.mean(masked_share) <= 0.30
    assert statistics.mean(lengths) > 2.5  # Poisson(3) spans (merged runs are longer, overlaps shorter)


def test_corrupted_texts_depend_on_seed_epoch_and_index_only():
    texts = [list(range(3, 3 + n)) for n in (30, 40, 50)]
    data = CorruptedTexts(texts, "span_corruption", eos_token_id=1, sentinel_ids=SENTINELS, seed=7)
    first = [data[i] for i in range(3)]
    again = CorruptedTexts(texts, "span_corruption", eos_token_id=1, sentinel_ids=SENTINELS, seed=7)
    assert [again[i] for i in (2, 0, 1)] == [first[2], first[0], first[1]]  # order of access does not matter
    data.set_epoch(1)
    assert [data[i] for i in range(3)] != first  # a new corruption every epoch
    data.set_epoch(0)
    assert [data[i] for i in range(3)] == first
    item = first[0]
    assert item["input_ids"][-1] == item["labels"][-1] == 1 and item["example_index"] == 0
    assert len(item["attention_mask"]) == len(item["input_ids"])
    infill = CorruptedTexts(texts, "text_infilling", eos_token_id=1, sentinel_ids=SENTINELS, seed=7)
    assert infill[1]["labels"] == texts[1] + [1] and SENTINELS[0] in infill[1]["input_ids"]
    with pytest.raises(ValueError, match="unknown pretraining objective"):
        CorruptedTexts(texts, "mlm", eos_token_id=1, sentinel_ids=SENTINELS, seed=0)
    with pytest.raises(ValueError, match="sentinel"):
        CorruptedTexts(texts, "text_infilling", eos_token_id=1, sentinel_ids=[], seed=0)


# ------------------------------------------------------------------------------------ through the loop

@pytest.mark.parametrize("objective", ["text_infilling", "span_corruption"])
def test_pretraining_resumes_exactly_and_its_export_fine_tunes(objective, tiny_run, tmp_path, lcsts_train):
    corpus = tmp_path / "corpus.txt"  # plain text, one text per line, as a user's own unlabelled news
    corpus.write_text("\n".join(r["maintext"] for r in lcsts_train[100:140]) + "\n", encoding="utf-8")
    extra = ["--objective", objective, "--pretrain_files", str(corpus), "--max_train_steps", "6",
             "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--optimizer", "adamw",
             "--learning_rate", "1e-3", "--logging_steps", "1", "--eval_steps", "3", "--max_target_length", "64"]
    common = dict(n_train=16, n_eval=8, config_overrides={"dropout_rate": 0.1})
    assert train_decoder.main(tiny_run(out="full", extra=extra, **common)) == 0
    full = train_losses(tmp_path / "full")
    evals = [r for r in read_rows(tmp_path / "full") if "eval/loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(r["eval/loss"] > 0 for r in evals)
    assert not any("eval/rouge-1" in r for r in read_rows(tmp_path / "full"))
    best = json.loads((tmp_path / "full" / "best" / "title_config.json").read_text(encoding="utf-8"))
    assert best["metrics"]["eval/loss"] == min(r["eval/loss"] for r in evals)  # the lowest loss is kept

    reset_accelerate_state()
    argv = tiny_run(out="resumed", extra=extra + ["--save_steps", "2"], **common)
    assert train_decoder.main(argv, stop_after_steps=4) == 0  # mid-epoch (40 texts / 8 = 5 batches)
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    resumed = train_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step

    # the export loads with from_pretrained and fine-tunes on titles with --model_name_or_path
    reset_accelerate_state()
    data = write_jsonl(tmp_path / "pairs.jsonl", lcsts_train[:12])
    finetune = ["--model_name_or_path", str(tmp_path / "full" / "best"), "--train_file", str(data),
                "--validation_file", str(data), "--output_dir", str(tmp_path / "ft"), "--segmenter", "char",
                "--max_train_steps", "2", "--per_device_train_batch_size", "4", "--eval_max_new_tokens", "4",
                "--max_source_length", "64", "--eval_every_epoch", "false", "--save_steps", "0",
                "--select_generation_presets", "none"]
    assert train_decoder.main(finetune) == 0
    assert any("eval/rouge-1" in r for r in read_rows(tmp_path / "ft"))

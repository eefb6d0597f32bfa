"""Shared fixtures and helpers: real data, a sentencepiece tokenizer trained on real text, tiny random mT5
models built from a config, JSON-lines helpers. No network.

Real data comes from the shared data folder (``$SHARED_DATA_DIR``, default ``../shared/data`` beside the
repository) when it is there, else from the sample shipped in ``data/sample/`` (LCSTS train/val and 300 CSL
pairs), so a clone with nothing beside it runs every test."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = Path(os.environ.get("SHARED_DATA_DIR", REPO.parent / "shared" / "data"))
SAMPLE_DATA = REPO / "data" / "sample"

torch.set_flush_denormal(True)  # random lm_head weights hit subnormal slow paths otherwise
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads per process
# made steps 3-10x slower (oversubscription); one thread keeps the suite's run time predictable.
torch.set_num_threads(1)

TINY_MT5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)


def data_file(name: str) -> Path:
    """``name`` from the shared data folder when present, else from ``data/sample/``."""
    for folder in (SHARED_DATA, SAMPLE_DATA):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} is neither in {SHARED_DATA} nor in {SAMPLE_DATA}")


def read_records(name: str, n: int | None = None) -> list[dict]:
    return read_jsonl(data_file(name))[:n] if n else read_jsonl(data_file(name))


def write_jsonl(path: Path, records) -> Path:
    """Write records as UTF-8 JSON lines (``ensure_ascii=False``) and return ``path``."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Plain ``json.loads`` per non-blank line: the independent reference the tests compare data_io with."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def lcsts_val() -> list[dict]:
    return read_records("lcsts_val.jsonl")


@pytest.fixture(scope="session")
def lcsts_train() -> list[dict]:
    return read_records("lcsts_train.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, lcsts_train) -> Path:
    """A 4,000-piece sentencepiece unigram tokenizer trained on 3,000 real LCSTS pairs."""
    from modeling import train_sentencepiece_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = [r["maintext"] for r in lcsts_train[:3000]] + [r["title"] for r in lcsts_train[:3000]]
    train_sentencepiece_tokenizer(texts, out, vocab_size=4000)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from modeling import get_tokenizer

    return get_tokenizer(str(tiny_tokenizer_dir))


def build_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A random tiny ``MT5ForConditionalGeneration`` (about 0.5M parameters) for ``tokenizer``."""
    from modeling import build_model_from_config, round_up

    torch.manual_seed(seed)
    return build_model_from_config({**TINY_MT5, "vocab_size": round_up(len(tokenizer)), **overrides})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A ``save_pretrained`` export (model + tokenizer + generation_config.json) of a random tiny mT5."""
    out = tmp_path_factory.mktemp("tiny_model")
    model = build_tiny_model(tiny_tokenizer)
    model.generation_config.max_new_tokens = 16
    model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons (precision, gradient accumulation), as a new process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each training run in a test starts from a clean Accelerate state, as it would in its own process."""
    yield
    reset_accelerate_state()


@pytest.fixture()
def one_thread(monkeypatch):
    """One thread here and in subprocesses (run.sh, CTranslate2): tiny models run fastest that way, and
    far faster when other jobs share the cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_export(tokenizer, out_dir, *, eos_scale: float = 2.0, seed: int = 0, max_new_tokens: int = 16,
                     **overrides):
    """Save a random tiny mT5 (config ``overrides`` applied) with its tokenizer, and return it in eval mode.
    Its titles end at varied lengths: the EOS row of ``lm_head`` is scaled up so EOS competes, and the pad
    row is zeroed (a trained model never emits pad, the decoder start token)."""
    model = build_tiny_model(tokenizer, seed=seed, **overrides)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] *= eos_scale
        model.lm_head.weight[model.config.pad_token_id] = 0
    model.generation_config.max_new_tokens = max_new_tokens
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model.eval()


@pytest.fixture()
def tiny_run(tmp_path, lcsts_train, tiny_tokenizer_dir):
    """argv builder for a tiny from-scratch run on real LCSTS pairs (char segmenter, no ckip data)."""

    def make(n_train=32, n_eval=None, out="out", config_overrides=None, train_records=None, extra=()):
        records = train_records or lcsts_train[:n_train]
        train_file = write_jsonl(tmp_path / f"train_{n_train}.jsonl", records)
        eval_file = write_jsonl(tmp_path / f"eval_{n_train}.jsonl", records[: n_eval or len(records)])
        config = tmp_path / "tiny_config.json"
        config.write_text(json.dumps({**TINY_MT5, **(config_overrides or {})}), encoding="utf-8")
        return [
            "--config_name", str(config), "--tokenizer_name", str(tiny_tokenizer_dir),
            "--train_file", str(train_file), "--validation_file", str(eval_file),
            "--output_dir", str(tmp_path / out), "--segmenter", "char",
            "--max_source_length", "64", "--max_target_length", "24", "--per_device_eval_batch_size", "32",
            "--eval_every_epoch", "false", "--save_steps", "0", *extra,
        ]

    return make


def read_rows(output_dir: Path) -> list[dict]:
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_losses(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_rows(output_dir) if "train/loss" in r}

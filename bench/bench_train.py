"""Training throughput: our ``train_decoder.py`` loop against ``transformers.Seq2SeqTrainer``.

    PYTHONPATH=. python bench/bench_train.py [--data-dir ../shared/data] [--shapes mt5-small tiny]
                                             [--repeats R] [--threads T] [--json OUT] [--work-dir DIR]

Contenders (same model weights, tokenizer, data, batch size, seed, optimizer and schedule):
- ``ours``: ``train_decoder.main`` (dynamic padding, batches grouped by length);
- ``hf_max_length``: ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq``, sources and titles padded to
  ``max_source_length`` / ``max_target_length`` at tokenisation (the homework setup, random batches);
- ``hf_grouped``: ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq`` with dynamic padding and
  ``train_sampling_strategy="group_by_length"`` (transformers 5's name for ``group_by_length=True``).

Method:
- Shapes: the published ``google/mt5-small`` config (untied ``lm_head``, 300M parameters) and the tiny
  preset (``configs/tiny-mt5.json``), random weights built once, saved with ``save_pretrained`` together
  with a sentencepiece tokenizer trained on the benchmark texts, and loaded by every contender (so init
  time is excluded and the weights are identical). ``torch.set_flush_denormal(True)`` in every contender.
- Data: long Sogou news articles mixed with CSL abstracts (``--long-fraction`` of them long),
  ``max_source_length`` 512, ``max_target_length`` 64. The pool holds ``4 x steps x batch`` pairs, which
  makes the length grouping (``get_length_grouped_indices``, shared by both grouped contenders) sort
  mega-batches of ``steps`` batches, as in a real run; the measured window covers one mega-batch's worth
  of pairs, a random sample of the pool. ``hf_grouped``'s ``LengthGroupedSampler`` gets a generator seeded
  like ours, so both grouped contenders see identical batches (checked and reported).
- Timing: steady state, from the end of warm-up optimizer step ``W`` to the end of step ``W + N``: for
  ours from ``metrics.jsonl`` ``elapsed_s`` (``--logging_steps 1``), for the Trainer from a
  ``TrainerCallback`` (``time.perf_counter()`` at ``on_step_end``). Non-padding source tokens are counted
  on the batches as collated. No evaluation, no checkpoints (ours stops through
  ``main(..., stop_after_steps=W + N)``, which skips the final evaluation and export).
- Every run is a fresh subprocess (peak RSS = its ``ru_maxrss``); runs are interleaved in rounds (3 by
  default), the order rotating each round (ours, (2), (3); then (2), (3), ours; then (3), ours, (2)) so
  that no contender always follows the same one; each round draws its own pool (seed + round), the same
  for all contenders. Figures are medians over rounds; the ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("ours", "hf_max_length", "hf_grouped")
LABELS = {
    "ours": "ours (train_decoder.py: dynamic padding + grouped by length)",
    "hf_max_length": "(2) Seq2SeqTrainer, padded to max length (homework setup)",
    "hf_grouped": "(3) Seq2SeqTrainer, dynamic padding + group_by_length",
}
SHAPES = ("mt5-small", "tiny")
# per shape: per-device batch, measured optimizer steps N, warm-up steps W (chosen so that the whole
# run_all stays under 20 minutes on a 2-core CPU; an mt5-small step padded to 512 x 64 takes ~7 s)
DEFAULTS = {"mt5-small": {"batch_size": 4, "steps": 6, "warmup_steps": 1, "repeats": 3},
            "tiny": {"batch_size": 16, "steps": 8, "warmup_steps": 2, "repeats": 3}}
TARGET_VS_MAX_LENGTH = 1.5  # ours / (2), samples per second
TARGET_VS_GROUPED = 1.0  # ours / (3)
NOISE = 0.03  # a ratio this close below its target is reported as "within noise", not as a miss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with sogou_news_smarty.jsonl and csl_abstract_title.jsonl")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="model shapes to run")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds of every shape (median over rounds); default: per shape, below")
    for shape, values in DEFAULTS.items():
        prefix = shape.replace("-", "_")
        parser.add_argument(f"--{shape}-batch-size", dest=f"{prefix}_batch_size", type=int,
                            default=values["batch_size"], help=f"per-device batch ({shape})")
        parser.add_argument(f"--{shape}-steps", dest=f"{prefix}_steps", type=int, default=values["steps"],
                            help=f"measured optimizer steps N ({shape})")
        parser.add_argument(f"--{shape}-warmup-steps", dest=f"{prefix}_warmup_steps", type=int,
                            default=values["warmup_steps"], help=f"warm-up optimizer steps W, not timed ({shape})")
        parser.add_argument(f"--{shape}-repeats", dest=f"{prefix}_repeats", type=int, default=values["repeats"],
                            help=f"interleaved rounds ({shape})")
    parser.add_argument("--max-source-length", type=int, default=512)
    parser.add_argument("--max-target-length", type=int, default=64)
    parser.add_argument("--long-fraction", type=float, default=0.25,
                        help="fraction of long Sogou articles in the pool, the rest CSL abstracts (default 0.25)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--vocab-size", type=int, default=16000, help="sentencepiece pieces of the tokenizer")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where models, data and run logs go (default: a temporary dir, removed at the end)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenMP threads in every run (default: torch's default, one per core)")
    parser.add_argument("--child-timeout", type=float, default=1200, help="seconds before a run is killed")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: run one contender
    args = parser.parse_args(argv)
    if args.child is None:
        for shape in args.shapes:
            p = shape.replace("-", "_")
            if args.repeats is not None:
                setattr(args, f"{p}_repeats", args.repeats)
            if min(getattr(args, f"{p}_{k}") for k in ("batch_size", "steps", "repeats")) <= 0:
                parser.error(f"--{shape}-batch-size, --{shape}-steps and the repeats must be positive")
            if getattr(args, f"{p}_warmup_steps") < 1:
                parser.error(f"--{shape}-warmup-steps must be >= 1 (the first step allocates the optimizer state)")
        if args.threads is not None and args.threads <= 0:
            parser.error("--threads must be positive")
        if not 0 < args.long_fraction < 1:
            parser.error("--long-fraction must be in (0, 1)")
    return args


def shape_settings(args: argparse.Namespace, shape: str) -> dict[str, int]:
    p = shape.replace("-", "_")
    return {key: getattr(args, f"{p}_{key}") for key in DEFAULTS[shape]}


# ----------------------------------------------------------------------------------------------------
# shared inputs: data pools, tokenizer, models (built once, in the parent)


def load_sources(data_dir: Path) -> tuple[list[dict], list[dict]]:
    """``(long, short)`` records: Sogou news articles and CSL abstracts.

    Raises:
        SystemExit: a data file is missing or malformed.
    """
    from data_io import DataError, read_jsonl

    found = []
    for name in ("sogou_news_smarty.jsonl", "csl_abstract_title.jsonl"):
        path = data_dir / name
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; pass --data-dir pointing at the shared data folder")
        try:
            found.append(read_jsonl(path))
        except DataError as err:
            raise SystemExit(f"error: {err}") from err
    return found[0], found[1]


def draw_pool(long: list[dict], short: list[dict], size: int, long_fraction: float, seed: int) -> list[dict]:
    """``size`` records, ``round(size * long_fraction)`` of them long, drawn without replacement and
    shuffled with ``seed``.

    Raises:
        SystemExit: not enough records of one kind.
    """
    n_long = round(size * long_fraction)
    if n_long > len(long) or size - n_long > len(short):
        raise SystemExit(f"error: a pool of {size} pairs needs {n_long} long articles (have {len(long)}) and "
                         f"{size - n_long} abstracts (have {len(short)}): lower the steps, batch size or "
                         "--long-fraction")
    rng = random.Random(seed)
    pool = rng.sample(long, n_long) + rng.sample(short, size - n_long)
    rng.shuffle(pool)
    return [{"id": r["id"], "maintext": r["maintext"], "title": r["title"]} for r in pool]


def write_jsonl(path: Path, records: list[dict]) -> None:
    from data_io import write_jsonl_atomic

    write_jsonl_atomic(path, records)


def build_models(work_dir: Path, texts: list[str], shapes: list[str], vocab_size: int, seed: int) -> dict[str, dict]:
    """Train the tokenizer on ``texts`` and save one random model per shape (with the tokenizer) to
    ``work_dir/model-SHAPE``. Returns ``{shape: {"dir", "parameters", "config"}}``.

    A model already in ``work_dir`` (a kept ``--work-dir``) is reused when it was built from the same
    texts, vocabulary size and seed (recorded in ``work_dir/model-SHAPE/bench_build.json``).
    """
    import gc
    import hashlib

    import torch

    from data_io import atomic_write_text
    from modeling import (MT5_SMALL_CONFIG, build_model_from_config, count_parameters, get_tokenizer,
                          lm_head_is_tied, read_config_json, round_up, train_sentencepiece_tokenizer)

    recipe = {"texts_sha1": hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest(), "vocab_size": vocab_size,
              "seed": seed}

    def cached(directory: Path) -> dict | None:
        try:
            info = json.loads((directory / "bench_build.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if info.get("recipe") == recipe else None

    tok_dir = work_dir / "tokenizer"
    if cached(tok_dir):
        tokenizer = get_tokenizer(str(tok_dir))
        print(f"  tokenizer: {len(tokenizer):,} tokens, reused from {tok_dir}", flush=True)
    else:
        t0 = time.perf_counter()
        tokenizer = train_sentencepiece_tokenizer(texts, tok_dir, vocab_size=vocab_size)
        atomic_write_text(tok_dir / "bench_build.json", json.dumps({"recipe": recipe}))
        print(f"  tokenizer: {len(tokenizer):,} tokens, trained on {len(texts):,} texts in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    built = {}
    for shape in shapes:
        out = work_dir / f"model-{shape}"
        info = cached(out)
        if info:
            built[shape] = info["model"]
            print(f"  {shape}: reused from {out}", flush=True)
            continue
        t0 = time.perf_counter()
        if shape == "mt5-small":
            fields = dict(MT5_SMALL_CONFIG)
        else:
            fields = read_config_json(str(REPO / "configs" / "tiny-mt5.json"), vocab_size=round_up(len(tokenizer)))
        torch.manual_seed(seed)
        model = build_model_from_config(fields)
        if lm_head_is_tied(model):
            raise SystemExit(f"error: the {shape} model has a tied lm_head; the benchmark needs the published shape")
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        total, _ = count_parameters(model)
        built[shape] = {"dir": str(out), "parameters": total,
                        "config": {k: fields[k] for k in ("vocab_size", "d_model", "d_ff", "num_layers",
                                                          "num_decoder_layers", "num_heads")}}
        atomic_write_text(out / "bench_build.json", json.dumps({"recipe": recipe, "model": built[shape]}))
        print(f"  {shape}: {total / 1e6:.1f}M parameters, built and saved in {time.perf_counter() - t0:.0f} s",
              flush=True)
        del model
        gc.collect()
    if hasattr(os, "sync"):  # flush the saved weights now, not during the first timed run
        os.sync()
    return built


# ----------------------------------------------------------------------------------------------------
# one contender, in its own process


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ``ru_maxrss`` in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def batch_record(batch) -> dict[str, int]:
    """Shape of a collated batch: rows, padded source/title lengths, non-padding source tokens."""
    return {"rows": int(batch["input_ids"].shape[0]), "source_len": int(batch["input_ids"].shape[1]),
            "target_len": int(batch["labels"].shape[1]), "source_tokens": int(batch["attention_mask"].sum())}


class RecordingCollator:
    """Wraps a collator and records :func:`batch_record` of every batch, in collation order (which is
    the training order: a single-process loader may collate one batch ahead, never out of order)."""

    def __init__(self, inner, log: list[dict]):
        self.inner, self.log = inner, log

    def __call__(self, features):
        batch = self.inner(features)
        self.log.append(batch_record(batch))
        return batch


def run_ours(spec: dict) -> dict:
    """Train with ``train_decoder.main`` and read the step times back from ``metrics.jsonl``."""
    import seq2seq_data
    import train_decoder

    batches: list[dict] = []
    original_call = seq2seq_data.IndexedSeq2SeqCollator.__call__

    def recording_call(self, features):
        batch = original_call(self, features)
        batches.append(batch_record(batch))
        return batch

    seq2seq_data.IndexedSeq2SeqCollator.__call__ = recording_call
    total_steps = spec["warmup_steps"] + spec["steps"]
    out = Path(spec["output_dir"])
    argv = [
        "--model_name_or_path", spec["model_dir"], "--tokenizer_name", spec["model_dir"],
        "--train_file", spec["train_file"], "--validation_file", spec["train_file"], "--max_eval_samples", "1",
        "--eval_max_new_tokens", "1", "--segmenter", "char", "--output_dir", str(out),
        "--max_source_length", str(spec["max_source_length"]), "--max_target_length", str(spec["max_target_length"]),
        "--per_device_train_batch_size", str(spec["batch_size"]), "--gradient_accumulation_steps", "1",
        "--optimizer", "adamw", "--learning_rate", str(spec["learning_rate"]), "--weight_decay", "0",
        "--lr_scheduler_type", "linear", "--warmup_steps", "0", "--max_grad_norm", "1.0",
        "--max_train_steps", str(total_steps), "--logging_steps", "1", "--eval_every_epoch", "false",
        "--eval_steps", "0", "--save_steps", "0", "--seed", str(spec["seed"]), "--group_by_length", "true",
        "--mixed_precision", "no", "--dataloader_num_workers", "0",
    ]
    # stop_after_steps = the last step: train() then skips the final evaluation and best/ export
    code = train_decoder.main(argv, stop_after_steps=total_steps)
    if code != 0:
        raise SystemExit(f"train_decoder.main exited with {code}")
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if "train/loss" in r]
    if [r["step"] for r in rows] != list(range(1, total_steps + 1)):
        raise SystemExit(f"metrics.jsonl has steps {[r['step'] for r in rows]}, expected 1..{total_steps}")
    # tokens per step as our loop counted them (rate x window), to check the batch log lines up
    logged_tokens = [r["train/source_tokens_per_s"] * b["rows"] / r["train/samples_per_s"]
                     for r, b in zip(rows, batches)]
    return {"step_end_s": [r["elapsed_s"] for r in rows], "batches": batches[:total_steps],
            "logged_source_tokens": logged_tokens, "final_loss": rows[-1]["train/loss"]}


def run_trainer(spec: dict, grouped: bool) -> dict:
    """Train with ``Seq2SeqTrainer``: padded to max length (``grouped=False``) or dynamic padding with
    ``group_by_length`` (``grouped=True``)."""
    import datasets
    import torch
    from transformers import (AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from data_io import read_jsonl
    from modeling import count_parameters, get_tokenizer, lm_head_is_tied

    tokenizer = get_tokenizer(spec["model_dir"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["model_dir"])
    records = read_jsonl(spec["train_file"])
    padding = False if grouped else "max_length"
    enc = tokenizer([r["maintext"] for r in records], max_length=spec["max_source_length"], truncation=True,
                    padding=padding)
    labels = tokenizer(text_target=[r["title"] for r in records], max_length=spec["max_target_length"],
                       truncation=True, padding=padding)["input_ids"]
    if padding:  # the homework script's ignore_pad_token_for_loss
        labels = [[t if t != tokenizer.pad_token_id else -100 for t in row] for row in labels]
    dataset = datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                          "labels": labels})
    batches: list[dict] = []
    collator = RecordingCollator(DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100), batches)
    step_end: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_end.append(time.perf_counter())

    seed = spec["seed"]

    class SeededSamplerTrainer(Seq2SeqTrainer):
        """The Trainer's own ``LengthGroupedSampler``, given a generator seeded like our loop's (seed +
        epoch 0) instead of the global RNG, so both grouped contenders draw the same batches."""

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                sampler.generator = torch.Generator().manual_seed(seed)
            return sampler

    total_steps = spec["warmup_steps"] + spec["steps"]
    training_args = Seq2SeqTrainingArguments(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=total_steps, learning_rate=spec["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
        optim="adamw_torch_fused", weight_decay=0.0, max_grad_norm=1.0, seed=seed, use_cpu=True,
        train_sampling_strategy="group_by_length" if grouped else "random", dataloader_num_workers=0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
    )
    trainer = SeededSamplerTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                                   processing_class=tokenizer, callbacks=[StepTimer()])
    result = trainer.train()
    if len(step_end) != total_steps:
        raise SystemExit(f"the Trainer ran {len(step_end)} steps, expected {total_steps}")
    trained = trainer.model
    return {"step_end_s": step_end, "batches": batches[:total_steps], "final_loss": result.training_loss,
            "parameters": count_parameters(trained)[0], "lm_head_tied": lm_head_is_tied(trained)}


def child_main(spec_path: Path) -> int:
    """Run one contender as described by the JSON spec and write its raw figures to ``spec["result"]``."""
    import torch

    from data_io import atomic_write_text

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    torch.set_flush_denormal(True)  # random weights: subnormal floats in backward are 20x slower otherwise
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    if spec["contender"] == "ours":
        raw = run_ours(spec)
    else:
        raw = run_trainer(spec, grouped=spec["contender"] == "hf_grouped")
    raw.update(peak_rss_mb=peak_rss_mb(), process_s=time.perf_counter() - started,
               torch_threads=torch.get_num_threads())
    atomic_write_text(spec["result"], json.dumps(raw) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------------
# parent: run the contenders, summarise


def summarise_run(raw: dict, warmup_steps: int, steps: int) -> dict[str, Any]:
    """Steady-state figures over optimizer steps ``warmup_steps + 1 .. warmup_steps + steps``.

    ``raw["step_end_s"]`` holds the end time of every step (seconds, any origin) and ``raw["batches"]``
    the :func:`batch_record` of every step's batch, in order.

    Raises:
        ValueError: fewer steps recorded than asked for.
    """
    ends, batches = raw["step_end_s"], raw["batches"]
    if len(ends) < warmup_steps + steps or len(batches) < warmup_steps + steps:
        raise ValueError(f"{len(ends)} step times and {len(batches)} batches recorded, "
                         f"need {warmup_steps + steps}")
    window_s = ends[warmup_steps + steps - 1] - ends[warmup_steps - 1]
    measured = batches[warmup_steps: warmup_steps + steps]
    samples = sum(b["rows"] for b in measured)
    source_tokens = sum(b["source_tokens"] for b in measured)
    padded_source = sum(b["rows"] * b["source_len"] for b in measured)
    return {
        "window_s": window_s, "samples": samples, "source_tokens": source_tokens,
        "samples_per_s": samples / window_s, "source_tokens_per_s": source_tokens / window_s,
        "s_per_step": window_s / steps, "source_padding_efficiency": source_tokens / padded_source,
        "mean_padded_source_len": padded_source / samples,
        "mean_padded_target_len": sum(b["rows"] * b["target_len"] for b in measured) / samples,
        "peak_rss_mb": raw["peak_rss_mb"], "process_s": raw["process_s"], "final_loss": raw["final_loss"],
        "torch_threads": raw["torch_threads"],
        "step_s": [round(b - a, 3) for a, b in zip(ends, ends[1:])],  # durations of steps 2.. (diagnostics)
    }


def run_child(spec: dict, work_dir: Path, timeout: float) -> dict:
    """Run one contender in a fresh interpreter; its output goes to ``work_dir/NAME.log``.

    Raises:
        RuntimeError: the run failed or timed out (with the tail of its log).
    """
    name = spec["name"]
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # a kept --work-dir: start from nothing
    Path(spec["result"]).unlink(missing_ok=True)
    spec_path = work_dir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log_path = work_dir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    if spec.get("threads"):
        env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work_dir), timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0 or not Path(spec["result"]).is_file():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-25:])
        what = f"timed out after {timeout:.0f} s" if code is None else f"exited with {code}"
        raise RuntimeError(f"{name} {what}; last lines of {log_path}:\n{tail}")
    return json.loads(Path(spec["result"]).read_text(encoding="utf-8"))


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired_ratios(runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """``ours / (2)`` and ``ours / (3)``: the median over rounds of the per-round ratios (runs of one
    round share data and sit close in time), for samples/s and source tokens/s, with the target."""
    ratios = {}
    for other, target in (("hf_max_length", TARGET_VS_MAX_LENGTH), ("hf_grouped", TARGET_VS_GROUPED)):
        if "ours" not in runs or other not in runs:
            continue
        pairs = list(zip(runs["ours"], runs[other]))
        per_round = [o["samples_per_s"] / x["samples_per_s"] for o, x in pairs]
        per_round_tokens = [o["source_tokens_per_s"] / x["source_tokens_per_s"] for o, x in pairs]
        ratios[f"ours/{other}"] = {"samples_per_s": statistics.median(per_round), "per_round": per_round,
                                   "source_tokens_per_s": statistics.median(per_round_tokens), "target": target,
                                   "met": statistics.median(per_round) >= target}
    return ratios


def bench_shape(args: argparse.Namespace, shape: str, model: dict, long: list[dict], short: list[dict],
                work_dir: Path) -> dict[str, Any]:
    """All rounds of one shape: ``{"settings", "runs", "summary", "ratios", "identical_batches"}``."""
    settings = shape_settings(args, shape)
    bs, steps, warmup, repeats = (settings[k] for k in ("batch_size", "steps", "warmup_steps", "repeats"))
    pool_size = 4 * steps * bs  # mega-batches of `steps` batches (get_length_grouped_indices: len // (4 bs))
    runs: dict[str, list[dict]] = {c: [] for c in args.contenders}
    identical: list[bool] = []
    for round_index in range(repeats):
        seed = args.seed + round_index
        train_file = work_dir / f"{shape}-pool-{round_index}.jsonl"
        write_jsonl(train_file, draw_pool(long, short, pool_size, args.long_fraction, seed))
        raws = {}
        # rotate the order every round: on a shared machine the run right after another one was seen to
        # be systematically faster or slower (memory reclaim, other jobs), so no contender keeps one slot
        shift = round_index % len(args.contenders)
        for contender in args.contenders[shift:] + args.contenders[:shift]:
            name = f"{shape}-{contender}-{round_index}"
            spec = {"name": name, "contender": contender, "model_dir": model["dir"], "train_file": str(train_file),
                    "output_dir": str(work_dir / name), "result": str(work_dir / f"{name}.result.json"),
                    "max_source_length": args.max_source_length, "max_target_length": args.max_target_length,
                    "learning_rate": args.learning_rate, "seed": seed, "threads": args.threads,
                    "batch_size": bs, "steps": steps, "warmup_steps": warmup}
            t0 = time.perf_counter()
            raw = run_child(spec, work_dir, args.child_timeout)
            if contender != "ours" and raw.get("lm_head_tied"):
                raise RuntimeError(f"{name}: the loaded model has a tied lm_head (not the published shape)")
            if contender == "ours":  # our loop's own token count must match the batches we logged
                for step, (logged, batch) in enumerate(zip(raw["logged_source_tokens"], raw["batches"]), 1):
                    if abs(logged - batch["source_tokens"]) > 0.01 * batch["source_tokens"] + 1:
                        raise RuntimeError(f"{name}: step {step} logged {logged:.0f} source tokens, "
                                           f"the collated batch had {batch['source_tokens']}")
            summary = summarise_run(raw, warmup, steps)
            raws[contender] = raw
            runs[contender].append({"round": round_index, "seed": seed, **summary})
            print(f"  [{shape}] round {round_index + 1}/{repeats} {contender:>13}: "
                  f"{summary['samples_per_s']:.2f} samples/s, {summary['source_tokens_per_s']:,.0f} source tokens/s, "
                  f"{summary['s_per_step']:.2f} s/step, peak RSS {summary['peak_rss_mb'] / 1024:.1f} GiB "
                  f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        if "ours" in raws and "hf_grouped" in raws:
            n = warmup + steps
            identical.append(raws["ours"]["batches"][:n] == raws["hf_grouped"]["batches"][:n])
    summary = {c: {key: median_of(rs, key) for key in
                   ("samples_per_s", "source_tokens_per_s", "s_per_step", "peak_rss_mb", "source_padding_efficiency",
                    "mean_padded_source_len", "mean_padded_target_len")} for c, rs in runs.items()}
    ratios = paired_ratios(runs)
    return {"settings": {**settings, "pool_size": pool_size, "long_fraction": args.long_fraction},
            "model": {"parameters": model["parameters"], "config": model["config"]},
            "runs": runs, "summary": summary, "ratios": ratios, "identical_batches": identical}


def environment() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}  # other jobs on the machine skew timings


def markdown_table(results: dict) -> str:
    """The figures as Markdown: one table per shape, then the ratios against the targets."""
    s = results["settings"]
    lines = [f"Training throughput: max_source_length {s['max_source_length']}, max_target_length "
             f"{s['max_target_length']}, AdamW (fused) lr {s['learning_rate']:g}, fp32, no evaluation/checkpoints; "
             f"pools of Sogou articles ({s['long_fraction']:.0%}) + CSL abstracts; steady state after warm-up; "
             "figures are medians of interleaved rounds (the order rotating each round), ratios medians of per-round "
             "ratios."]
    for shape, r in results["shapes"].items():
        st, model, config = r["settings"], r["model"], r["model"]["config"]
        lines += ["", f"**{shape}** ({model['parameters'] / 1e6:.1f}M parameters, vocab {config['vocab_size']:,}, "
                      f"d_model {config['d_model']}, {config['num_layers']}+{config['num_decoder_layers']} layers): "
                      f"batch {st['batch_size']}, "
                      f"{st['steps']} steps timed after {st['warmup_steps']} warm-up, pool of {st['pool_size']} pairs, "
                      f"{st['repeats']} rounds",
                  "",
                  "| contender | samples/s | source tokens/s | s/optimizer step | peak RSS (GiB) | padded source len | "
                  "padded title len | source padding efficiency |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for contender, m in r["summary"].items():
            lines.append(f"| {LABELS[contender]} | {m['samples_per_s']:.2f} | {m['source_tokens_per_s']:,.0f} | "
                         f"{m['s_per_step']:.2f} | {m['peak_rss_mb'] / 1024:.2f} | {m['mean_padded_source_len']:.0f} | "
                         f"{m['mean_padded_target_len']:.0f} | {m['source_padding_efficiency']:.0%} |")
        lines.append("")
        for name, ratio in r["ratios"].items():
            other = name.split("/")[1]
            if ratio["met"]:
                verdict = "met"
            elif ratio["samples_per_s"] >= ratio["target"] - NOISE:
                verdict = f"not met, but within {NOISE:.0%} (measurement noise)"
            else:
                verdict = "MISSED"
            rounds = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
            lines.append(f"- ours / {LABELS[other].split(' ')[0]}: x{ratio['samples_per_s']:.2f} samples/s "
                         f"(rounds: {rounds}), x{ratio['source_tokens_per_s']:.2f} source tokens/s; target "
                         f">= x{ratio['target']:.1f}: {verdict}")
        if r["identical_batches"]:
            same = all(r["identical_batches"])
            lines.append(f"- ours and (3) trained on identical batches: {'yes' if same else 'NO'}")
    threads = sorted({run["torch_threads"] for r in results["shapes"].values()
                      for shape_runs in r["runs"].values() for run in shape_runs})
    lines += ["", f"torch threads per run: {', '.join(map(str, threads))}; 1-minute load average at the end: "
                  f"{results['environment']['load_average_1min']:.2f} on {results['environment']['cpu_count']} CPUs"]
    return "\n".join(lines)


def bench(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    long, short = load_sources(args.data_dir)
    print("building the shared tokenizer and models", flush=True)
    texts = [r["maintext"] for r in long + short] + [r["title"] for r in long + short]
    models = build_models(work_dir, texts, args.shapes, args.vocab_size, args.seed)
    shapes = {}
    for shape in args.shapes:
        print(f"{shape}: {', '.join(args.contenders)} x {shape_settings(args, shape)['repeats']} rounds", flush=True)
        shapes[shape] = bench_shape(args, shape, models[shape], long, short, work_dir)
    settings = {k: getattr(args, k) for k in ("max_source_length", "max_target_length", "learning_rate",
                                                "long_fraction", "seed", "vocab_size", "threads")}
    return {"benchmark": "train", "settings": settings, "shapes": shapes}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # run as a script from anywhere: import the repo's modules
        sys.path.insert(0, str(REPO))
    if args.child is not None:
        return child_main(args.child)
    if args.json and not args.json.parent.is_dir():
        raise SystemExit(f"error: output directory {args.json.parent} does not exist")
    # a SIGTERM (run_all's timeout) unwinds normally: the running child is killed, the temp dir removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    try:
        if args.work_dir is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            figures = bench(args, args.work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
                figures = bench(args, Path(tmp))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {**figures, "environment": environment(), "wall_s": time.perf_counter() - started}
    print(markdown_table(results))
    if args.json:
        from data_io import DataError, atomic_write_text

        try:
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        except (OSError, DataError) as err:
            raise SystemExit(f"error: cannot write {args.json}: {err}") from err
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

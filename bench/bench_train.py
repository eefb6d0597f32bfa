"""Training throughput: our ``train_decoder.py`` loop against ``transformers.Seq2SeqTrainer``.

    python -m bench.bench_train [--data_dir ../shared/data] [--shapes mt5-small tiny] [--repeats R]
                                [--threads T] [--json OUT] [--work_dir DIR]

Contenders (same model weights, tokenizer, data, batch size, seed, optimizer and schedule):
- ``ours``: ``train_decoder.main`` (dynamic padding, batches grouped by length);
- ``hf_max_length``: ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq``, sources and titles padded to
  ``max_source_length`` / ``max_target_length`` at tokenisation (the homework setup, random batches);
- ``hf_grouped``: ``Seq2SeqTrainer`` + ``DataCollatorForSeq2Seq`` with dynamic padding and
  ``train_sampling_strategy="group_by_length"`` (transformers 5's name for ``group_by_length=True``).

Method:
- Shapes: the published ``google/mt5-small`` config (untied ``lm_head``, 300M parameters) and the tiny
  preset (``configs/tiny-mt5.json``), random weights built once, saved with ``save_pretrained`` together
  with a sentencepiece tokenizer trained on the benchmark texts (``harness.random_mt5_export``), and
  loaded by every contender (so init time is excluded and the weights are identical).
  ``torch.set_flush_denormal(True)`` in every contender.
- Data: long Sogou news articles mixed with CSL abstracts (``--long_fraction`` of them long),
  ``max_source_length`` 512, ``max_target_length`` 64. The pool holds ``4 x steps x batch`` pairs, which
  makes the length grouping (``get_length_grouped_indices``, shared by both grouped contenders) sort
  mega-batches of ``steps`` batches, as in a real run; the measured window covers one mega-batch's worth
  of pairs, a random sample of the pool. ``hf_grouped``'s ``LengthGroupedSampler`` gets a generator seeded
  like ours, so both grouped contenders see identical batches (checked and reported).
- Timing: steady state, from the end of warm-up optimizer step ``W`` to the end of step ``W + N``: for
  ours from ``metrics.jsonl`` ``elapsed_s`` (``--logging_steps 1``), for the Trainer from a
  ``TrainerCallback`` (``time.perf_counter()`` at ``on_step_end``). Non-padding source tokens are counted
  on the batches as collated (ours: through ``train_decoder.Factories(collator=...)``). No evaluation, no
  checkpoints (ours stops through ``main(..., stop_after_steps=W + N)``, which skips the final evaluation
  and export).
- Every run is a fresh subprocess (``harness.run_child``; peak RSS = its own ``VmHWM``,
  ``harness.peak_rss_mb``); runs are interleaved in rounds (3 by default), the order rotating each round
  (ours, (2), (3); then (2), (3), ours; then (3), ours, (2)) so that no contender always follows the same
  one; each round draws its own pool (seed + round), the same for all contenders. Figures are medians
  over rounds; the ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness

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
    harness.add_common_arguments(parser, data_help="folder with sogou_news_smarty.jsonl and csl_abstract_title.jsonl",
                                 child_timeout=1200)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="model shapes to run")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds of every shape (median over rounds); default: per shape, below")
    for shape, values in DEFAULTS.items():
        p = shape_prefix(shape)
        parser.add_argument(f"--{p}_batch_size", type=int, default=values["batch_size"],
                            help=f"per-device batch ({shape})")
        parser.add_argument(f"--{p}_steps", type=int, default=values["steps"],
                            help=f"measured optimizer steps N ({shape})")
        parser.add_argument(f"--{p}_warmup_steps", type=int, default=values["warmup_steps"],
                            help=f"warm-up optimizer steps W, not timed ({shape})")
        parser.add_argument(f"--{p}_repeats", type=int, default=values["repeats"], help=f"interleaved rounds ({shape})")
    parser.add_argument("--max_source_length", type=int, default=512)
    parser.add_argument("--max_target_length", type=int, default=64)
    parser.add_argument("--long_fraction", type=float, default=0.25,
                        help="fraction of long Sogou articles in the pool, the rest CSL abstracts (default 0.25)")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--vocab_size", type=int, default=16000, help="sentencepiece pieces of the tokenizer")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    harness.check_common_arguments(parser, args)
    for shape in args.shapes:
        p = shape_prefix(shape)
        if args.repeats is not None:
            setattr(args, f"{p}_repeats", args.repeats)
        if min(getattr(args, f"{p}_{k}") for k in ("batch_size", "steps", "repeats")) <= 0:
            parser.error(f"--{p}_batch_size, --{p}_steps and the repeats must be positive")
        if getattr(args, f"{p}_warmup_steps") < 1:
            parser.error(f"--{p}_warmup_steps must be >= 1 (the first step allocates the optimizer state)")
    if not 0 < args.long_fraction < 1:
        parser.error("--long_fraction must be in (0, 1)")
    return args


def shape_prefix(shape: str) -> str:
    return shape.replace("-", "_")


def shape_settings(args: argparse.Namespace, shape: str) -> dict[str, int]:
    return {key: getattr(args, f"{shape_prefix(shape)}_{key}") for key in DEFAULTS[shape]}


def shape_config(shape: str) -> dict[str, Any]:
    """MT5Config fields of a shape (the tiny preset's vocab_size comes from the tokenizer)."""
    from modeling import MT5_SMALL_CONFIG, read_config_json

    return dict(MT5_SMALL_CONFIG) if shape == "mt5-small" else read_config_json(
        str(harness.REPO / "configs" / "tiny-mt5.json"))


# ----------------------------------------------------------------------------------------------------
# data pools


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
                         "--long_fraction")
    rng = random.Random(seed)
    pool = rng.sample(long, n_long) + rng.sample(short, size - n_long)
    rng.shuffle(pool)
    return [{"id": r["id"], "maintext": r["maintext"], "title": r["title"]} for r in pool]


# ----------------------------------------------------------------------------------------------------
# the contenders, each in its own process (harness.run_child -> run_contender)


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


def recording_factories(log: list[dict]):
    """``train_decoder.Factories`` whose collator is our usual one wrapped in a :class:`RecordingCollator`."""
    import train_decoder

    def collator(args, tokenizer):
        return RecordingCollator(train_decoder.get_collator(args, tokenizer), log)

    return train_decoder.Factories(collator=collator)


def run_contender(spec: dict) -> dict:
    """Child entry: train one contender as ``spec`` says; returns its step end times and batches."""
    torch_threads = harness.setup_torch(spec["threads"])
    started = time.perf_counter()
    if spec["contender"] == "ours":
        raw = run_ours(spec)
    else:
        raw = run_trainer(spec, grouped=spec["contender"] == "hf_grouped")
    return {**raw, "process_s": time.perf_counter() - started, "torch_threads": torch_threads}


def run_ours(spec: dict) -> dict:
    """Train with ``train_decoder.main`` and read the step times back from ``metrics.jsonl``."""
    import train_decoder
    from data_io import read_jsonl

    batches: list[dict] = []
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
    code = train_decoder.main(argv, stop_after_steps=total_steps, factories=recording_factories(batches))
    if code != 0:
        raise SystemExit(f"train_decoder.main exited with {code}")
    rows = [r for r in read_jsonl(out / "metrics.jsonl", text_column=None, require_summary=False, require_id=False)
            if "train/loss" in r]
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
    from transformers import (
        AutoModelForSeq2SeqLM,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )
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


def check_raw(name: str, contender: str, raw: dict) -> None:
    """The checks every run must pass before its figures count.

    Raises:
        RuntimeError: a Trainer contender loaded a tied ``lm_head`` (not the published shape), or our
            loop's own per-step token count differs from the batches the recording collator saw.
    """
    if contender != "ours" and raw.get("lm_head_tied"):
        raise RuntimeError(f"{name}: the loaded model has a tied lm_head (not the published shape)")
    if contender == "ours":
        for step, (logged, batch) in enumerate(zip(raw["logged_source_tokens"], raw["batches"]), 1):
            if abs(logged - batch["source_tokens"]) > 0.01 * batch["source_tokens"] + 1:
                raise RuntimeError(f"{name}: step {step} logged {logged:.0f} source tokens, "
                                   f"the collated batch had {batch['source_tokens']}")


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


def bench_shape(args: argparse.Namespace, shape: str, export: harness.RandomExport, long: list[dict],
                short: list[dict], work_dir: Path) -> dict[str, Any]:
    """All rounds of one shape: ``{"settings", "model", "runs", "summary", "ratios", "identical_batches"}``."""
    from data_io import write_jsonl_atomic

    settings = shape_settings(args, shape)
    bs, steps, warmup, repeats = (settings[k] for k in ("batch_size", "steps", "warmup_steps", "repeats"))
    pool_size = 4 * steps * bs  # mega-batches of `steps` batches (get_length_grouped_indices: len // (4 bs))
    runs: dict[str, list[dict]] = {c: [] for c in args.contenders}
    identical: list[bool] = []
    env = {**harness.QUIET_ENV, **harness.thread_env(args.threads)}
    for round_index in range(repeats):
        seed = args.seed + round_index
        train_file = work_dir / f"{shape}-pool-{round_index}.jsonl"
        write_jsonl_atomic(train_file, draw_pool(long, short, pool_size, args.long_fraction, seed))
        raws = {}
        for contender in harness.rotation(args.contenders, round_index):
            name = f"{shape}-{contender}-{round_index}"
            spec = {"contender": contender, "model_dir": str(export.dir), "train_file": str(train_file),
                    "output_dir": str(work_dir / name), "max_source_length": args.max_source_length,
                    "max_target_length": args.max_target_length, "learning_rate": args.learning_rate, "seed": seed,
                    "threads": args.threads, "batch_size": bs, "steps": steps, "warmup_steps": warmup}
            shutil.rmtree(spec["output_dir"], ignore_errors=True)  # a kept --work_dir: start from nothing
            t0 = time.perf_counter()
            raw = harness.run_child("bench.bench_train:run_contender", spec, work_dir, name,
                                    timeout=args.child_timeout, env=env)
            check_raw(name, contender, raw)
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
    summary = {c: {key: statistics.median(r[key] for r in rs) for key in
                   ("samples_per_s", "source_tokens_per_s", "s_per_step", "peak_rss_mb", "source_padding_efficiency",
                    "mean_padded_source_len", "mean_padded_target_len")} for c, rs in runs.items()}
    return {"settings": {**settings, "pool_size": pool_size, "long_fraction": args.long_fraction},
            "model": {"parameters": export.parameters, "config": export.config},
            "runs": runs, "summary": summary, "ratios": paired_ratios(runs), "identical_batches": identical}


def verdict(ratio: dict[str, Any]) -> str:
    if ratio["met"]:
        return "met"
    if ratio["samples_per_s"] >= ratio["target"] - NOISE:
        return f"not met, but within {NOISE:.0%} (measurement noise)"
    return "MISSED"


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
            rounds = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
            lines.append(f"- ours / {LABELS[other].split(' ')[0]}: x{ratio['samples_per_s']:.2f} samples/s "
                         f"(rounds: {rounds}), x{ratio['source_tokens_per_s']:.2f} source tokens/s; target "
                         f">= x{ratio['target']:.1f}: {verdict(ratio)}")
        if r["identical_batches"]:
            same = all(r["identical_batches"])
            lines.append(f"- ours and (3) trained on identical batches: {'yes' if same else 'NO'}")
    threads = sorted({run["torch_threads"] for r in results["shapes"].values()
                      for shape_runs in r["runs"].values() for run in shape_runs})
    lines += ["", f"torch threads per run: {', '.join(map(str, threads))}; 1-minute load average at the end: "
                  f"{results['machine']['load_average'][0]:.2f} on {results['machine']['cpu_count']} CPUs"]
    return "\n".join(lines)


def bench(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    long = harness.read_data(args.data_dir, "sogou_news_smarty.jsonl")
    short = harness.read_data(args.data_dir, "csl_abstract_title.jsonl")
    print("building the shared tokenizer and models", flush=True)
    texts = [r["maintext"] for r in long + short] + [r["title"] for r in long + short]
    exports = {shape: harness.random_mt5_export(work_dir, texts, shape_config(shape), args.vocab_size, args.seed,
                                                name=f"model-{shape}", timeout=args.child_timeout)
               for shape in args.shapes}
    shapes = {}
    for shape in args.shapes:
        print(f"{shape}: {', '.join(args.contenders)} x {shape_settings(args, shape)['repeats']} rounds", flush=True)
        shapes[shape] = bench_shape(args, shape, exports[shape], long, short, work_dir)
    settings = {k: getattr(args, k) for k in ("max_source_length", "max_target_length", "learning_rate",
                                                "long_fraction", "seed", "vocab_size", "threads")}
    return {"benchmark": "train", "settings": settings, "shapes": shapes}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.exit_on_sigterm()
    started = time.perf_counter()
    try:
        with harness.scratch_dir(args.work_dir, "bench_train_") as work_dir:
            figures = bench(args, work_dir)
    except RuntimeError as err:  # a failed run (harness.ChildError) or a failed check
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {**figures, "machine": harness.machine(), "wall_s": time.perf_counter() - started}
    print(markdown_table(results))
    if args.json:
        harness.write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

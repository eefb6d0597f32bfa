"""Vocabulary pruning: the full mt5-small shape against the same model with fewer vocabulary rows.

    python -m bench.bench_prune [--kept 20000 40000 60000] [--repeats R] [--steps N] [--num_articles A]
                                [--threads T] [--device cpu|cuda] [--json OUT] [--work_dir DIR]

Models (random weights; ``prune_vocab.py`` is what a user runs on the real ``google/mt5-small``):
- ``full``: the published mt5-small shape (``modeling.MT5_SMALL_CONFIG``: 250,112 rows, untied ``lm_head``,
  300M parameters), built by ``harness.random_mt5_export`` with the same recipe as ``bench_train``'s
  (tokenizer, seed), so one ``--work_dir`` serves both benchmarks;
- ``pruned-K`` for each ``--kept`` K: that model with its input embeddings and its untied ``lm_head``
  sliced to the first K rows (``prune_vocab.slice_vocabulary``). The real mT5 vocabulary cannot be loaded
  here, so K is chosen for the benchmark, not measured on a corpus; the benchmark tokenizer (``--vocab_size``
  pieces + 100 sentinels) has every id below the smallest K, so one tokenizer serves every model. The
  pruned exports are built once, in a child process (the parent's peak RSS would otherwise pass to every
  measured run), kept in the work dir and reused while their recipe (the full export's recipe, K)
  matches. The build checks what a pruned model must be: K rows, ``lm_head`` still untied after
  ``from_pretrained``, and logits equal to the full model's at the kept ids.

Figures:
- Export size: bytes of the files ``save_pretrained`` wrote (weights fp32, config, tokenizer), and of the
  CTranslate2 int8 conversion.
- Training, CPU fp32: samples/s, source tokens/s, s/step and peak RSS of ``bench_train.run_contender``:
  ``ours`` (``train_decoder.py``: dynamic padding, grouped by length) on every model, and for the full model
  also ``hf_grouped`` (``Seq2SeqTrainer`` with dynamic padding + ``group_by_length``); the same pools
  (Sogou articles + CSL abstracts), batches, steps, optimizer and timing window as ``bench_train``.
  Interleaved rounds, the order rotating each round (``harness.rotation``), each round its own pool.
- Where the time goes (``--profile_steps``, 0 to skip): a plain training loop (same optimizer, same
  batches as ``ours`` in round 1) timing forward (with the loss), backward and optimizer step (gradient
  clipping, fused AdamW, zeroing) per step.
- Decoding: beam 4 seconds per article with the ``hf`` and ``ct2`` (int8) backends through
  ``bench_inference.measure``: the first ``--num_articles`` Sogou articles, exactly ``--new_tokens`` tokens
  forced per article, batches of ``--inference_batch_size``.
- GPU (``--device cuda``): training step time and peak ``torch.cuda.max_memory_allocated`` of every model
  with bf16 autocast, in the same plain loop. Without CUDA the section is skipped with a note.

Figures are medians over rounds, ratios (pruned against full, in the same run) medians of per-round
ratios. The defaults take about 17 minutes on a quiet 2-core CPU with ``--threads 1`` (3 rounds of 5
training runs about 10 min, decoding with the int8 conversions about 3.5 min, builds and the step split
about 3 min; estimated from short runs) and 20-25 minutes while other jobs share the CPUs; a kept
``--work_dir`` skips the builds and conversions next time. Every measured run is a fresh subprocess
(``harness.run_child``); CPU runs see no GPU (``CUDA_VISIBLE_DEVICES`` empty), so the CPU figures stay CPU
figures on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import bench_train, harness

FULL = "full"
DEFAULT_KEPT = (20000, 40000, 60000)
VERDICT_KEPT = 40000  # the pruned model the verdicts are about
SENTINELS = 100  # <extra_id_N> tokens modeling.train_sentencepiece_tokenizer adds to the pieces
# (name, figure, target, at_least, noise): ratios of the pruned model at VERDICT_KEPT against the full one;
# noise is the relative shortfall reported as "within noise" (timings only; sizes and RSS are exact enough)
TARGETS = (
    ("training samples/s vs the full model, our loop", "train_vs_full_ours", 1.3, True, 0.03),
    ("training samples/s vs Seq2SeqTrainer (dynamic padding + group_by_length) on the full model",
     "train_vs_full_hf_grouped", 1.3, True, 0.03),
    ("peak training RSS vs the full model (our loop)", "peak_rss", 0.6, False, 0.0),
    ("export size vs the full model (fp32)", "export_size", 0.4, False, 0.0),
    ("beam-4 decoding speed-up, hf backend", "beam4_hf_speedup", 2.5, True, 0.03),
    ("beam-4 decoding speed-up, ct2 backend (int8)", "beam4_ct2_speedup", 2.0, True, 0.03),
)
TRAIN_DEFAULTS = bench_train.DEFAULTS["mt5-small"]  # batch 4, 6 steps after 1 warm-up, 3 rounds
BACKENDS = ("hf", "ct2")
CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": ""}
DRY_RUN_COMMAND = "python prune_vocab.py --model_name_or_path google/mt5-small --corpus data/train.jsonl --dry_run"


class CudaUnavailable(RuntimeError):
    """``--device cuda`` on a machine where torch sees no CUDA device."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, data_help="folder with sogou_news_smarty.jsonl and csl_abstract_title.jsonl",
                                 child_timeout=1200)
    parser.add_argument("--kept", type=int, nargs="+", default=list(DEFAULT_KEPT),
                        help="vocabulary rows of the pruned models (chosen for the benchmark; see the report for how "
                             "to measure the real count)")
    parser.add_argument("--vocab_size", type=int, default=16000,
                        help="sentencepiece pieces of the benchmark tokenizer (as bench_train's)")
    parser.add_argument("--repeats", type=int, default=TRAIN_DEFAULTS["repeats"],
                        help="interleaved training rounds (median over rounds)")
    parser.add_argument("--batch_size", type=int, default=TRAIN_DEFAULTS["batch_size"], help="training batch")
    parser.add_argument("--steps", type=int, default=TRAIN_DEFAULTS["steps"], help="timed optimizer steps N")
    parser.add_argument("--warmup_steps", type=int, default=TRAIN_DEFAULTS["warmup_steps"],
                        help="warm-up optimizer steps W, not timed")
    parser.add_argument("--profile_steps", type=int, default=2,
                        help="steps of the forward/backward/optimizer time split per model (0: skip)")
    parser.add_argument("--max_source_length", type=int, default=512)
    parser.add_argument("--max_target_length", type=int, default=64)
    parser.add_argument("--long_fraction", type=float, default=0.25,
                        help="fraction of long Sogou articles in the training pools, the rest CSL abstracts")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num_articles", type=int, default=16, help="Sogou articles decoded per backend and model")
    parser.add_argument("--inference_batch_size", type=int, default=8, help="articles per decoding batch")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per article (forced)")
    parser.add_argument("--inference_repeats", type=int, default=1, help="interleaved decoding rounds")
    parser.add_argument("--split_new_tokens", type=int, default=1,
                        help="where the decoding time goes: decode again with this many forced tokens, so the "
                             "encoder + first steps and the cost of each further token can be told apart (0: skip)")
    parser.add_argument("--ct2_compute_type", default="int8", help="CTranslate2 quantization")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: also measure bf16 training on the GPU (step time, peak GPU memory)")
    parser.add_argument("--skip_cpu", action="store_true",
                        help="only the export sizes and the GPU section (with --device cuda)")
    parser.add_argument("--gpu_batch_size", type=int, default=16, help="training batch on the GPU")
    parser.add_argument("--gpu_steps", type=int, default=10, help="timed GPU steps")
    parser.add_argument("--gpu_warmup_steps", type=int, default=3, help="GPU warm-up steps, not timed")
    args = parser.parse_args(argv)
    harness.check_common_arguments(parser, args)
    for name in ("vocab_size", "repeats", "batch_size", "steps", "num_articles", "inference_batch_size",
                 "new_tokens", "inference_repeats", "gpu_batch_size", "gpu_steps", "max_source_length",
                 "max_target_length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.warmup_steps < 1 or args.gpu_warmup_steps < 1:
        parser.error("--warmup_steps and --gpu_warmup_steps must be >= 1 (the first step allocates the optimizer "
                     "state)")
    if args.profile_steps < 0:
        parser.error("--profile_steps must be >= 0")
    if not 0 <= args.split_new_tokens < args.new_tokens:
        parser.error("--split_new_tokens must be >= 0 and below --new_tokens")
    if not 0 < args.long_fraction < 1:
        parser.error("--long_fraction must be in (0, 1)")
    if args.skip_cpu and args.device != "cuda":
        parser.error("--skip_cpu leaves nothing to measure without --device cuda")
    full_rows = full_config()["vocab_size"]
    args.kept = sorted(set(args.kept))
    for kept in args.kept:
        if not args.vocab_size + SENTINELS <= kept < full_rows:
            parser.error(f"--kept {kept}: must hold the benchmark tokenizer's {args.vocab_size + SENTINELS:,} tokens "
                         f"(--vocab_size + {SENTINELS} sentinels) and be below the full {full_rows:,} rows")
    return args


def full_config() -> dict[str, Any]:
    from modeling import MT5_SMALL_CONFIG

    return dict(MT5_SMALL_CONFIG)


def model_name(kept: int | None) -> str:
    return FULL if kept is None else f"pruned-{kept}"


# ----------------------------------------------------------------------------------------------------
# pruned exports


def export_size_bytes(directory: str | os.PathLike) -> int:
    """Bytes of the regular files at the top of an export directory: what ``save_pretrained`` wrote
    (weights, config, generation config, tokenizer). Subdirectories (``ct2-int8/`` conversions) and the
    benchmark's own ``bench_build.json`` are not counted.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such export directory")
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name != harness.BUILD_INFO)


def directory_size_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes of every file under ``directory`` (None when it does not exist)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def probe_inputs(rows: int):
    """A fixed short (encoder ids, decoder ids) pair ``[1, n]`` with every id below ``rows``, for the logits check."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return (torch.randint(3, rows, (1, 12), generator=generator),
            torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.randint(3, rows, (1, 5), generator=generator)], 1))


def pruned_exports(work_dir: Path, source: harness.RandomExport, kept: Sequence[int], *,
                   timeout: float | None = None) -> dict[int, harness.RandomExport]:
    """``{K: export}``: ``source`` with its embedding and ``lm_head`` rows sliced to the first K rows, saved to
    ``work_dir/model-mt5-small-pruned-K`` with the source's tokenizer. An export is reused when its
    ``bench_build.json`` records the same recipe (the source's recipe and K); the missing ones are built
    together in one child process (:func:`build_pruned_exports`, log ``work_dir/build-pruned.log``).

    Raises:
        harness.ChildError: the build failed (a K below the tokenizer's ids, a tied ``lm_head``, logits
            that differ from the source's at the kept ids).
    """
    work_dir = Path(work_dir)
    source_info = harness._read_build_info(source.dir) or {}
    source_recipe = source_info.get("recipe") or {"dir": str(source.dir), "parameters": source.parameters}
    exports: dict[int, harness.RandomExport] = {}
    wanted = []
    for rows in kept:
        out = work_dir / f"{source.dir.name}-pruned-{rows}"
        recipe = json.loads(json.dumps({"source": source_recipe, "kept_rows": rows,
                                        "method": "first K rows, prune_vocab.slice_vocabulary"}))
        info = harness._read_build_info(out)
        if info is not None and info.get("recipe") == recipe and (out / "config.json").is_file():
            built = info["export"]
            exports[rows] = harness.RandomExport(dir=out, parameters=built["parameters"], config=built["config"],
                                                 tokenizer_size=built["tokenizer_size"], reused=True)
            print(f"  {out.name}: {built['parameters'] / 1e6:.1f}M parameters, reused from {out}", flush=True)
        else:
            wanted.append({"rows": rows, "out": str(out), "recipe": recipe})
    if wanted:
        started = time.perf_counter()
        result = harness.run_child("bench.bench_prune:build_pruned_exports", {"source": str(source.dir),
                                   "exports": wanted}, work_dir, "build-pruned", timeout=timeout,
                                   env={**harness.QUIET_ENV, **CPU_ONLY_ENV})
        for built in result["exports"]:
            exports[built["rows"]] = harness.RandomExport(
                dir=Path(built["dir"]), parameters=built["parameters"], config=built["config"],
                tokenizer_size=built["tokenizer_size"], reused=False, build_s=time.perf_counter() - started)
            print(f"  {Path(built['dir']).name}: {built['parameters'] / 1e6:.1f}M parameters, built (logits at the "
                  f"kept ids within {built['max_logit_difference']:.1e} of the full model's)", flush=True)
    return {rows: exports[rows] for rows in kept}


def build_pruned_exports(spec: dict[str, Any]) -> dict[str, Any]:
    """Child entry of :func:`pruned_exports`: load the source once, slice it to each K (largest first: the
    first K rows of the first K' rows are the first K rows), save, reload and check each export.

    Returns ``{"exports": [{"rows", "dir", "parameters", "config", "tokenizer_size", "max_logit_difference"}]}``.

    Raises:
        RuntimeError: a K smaller than the tokenizer's ids or not below the source's rows; a pruned model
            that is tied, has other rows, or whose logits differ from the source's at the kept ids.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    import modeling
    from data_io import atomic_write_text
    from export import swap_dir
    from prune_vocab import slice_vocabulary

    torch.set_flush_denormal(True)
    source = Path(spec["source"])
    tokenizer = modeling.get_tokenizer(str(source))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(source)).eval()
    full_rows = model.get_input_embeddings().weight.shape[0]
    tied = modeling.lm_head_is_tied(model)
    top_id = max(tokenizer.get_vocab().values())
    plans = sorted(spec["exports"], key=lambda e: -e["rows"])
    for plan in plans:
        if not top_id < plan["rows"] < full_rows:
            raise RuntimeError(f"cannot keep {plan['rows']} rows: the tokenizer has ids up to {top_id} and the source "
                               f"{full_rows} rows (the kept rows must hold every id, and be fewer)")
    encoder_ids, decoder_ids = probe_inputs(min(p["rows"] for p in plans))
    with torch.no_grad():
        reference = model(input_ids=encoder_ids, decoder_input_ids=decoder_ids).logits
    built = []
    for plan in plans:
        rows, out = plan["rows"], Path(plan["out"])
        slice_vocabulary(model, range(rows))
        if modeling.lm_head_is_tied(model) != tied:
            raise RuntimeError(f"{out}: slicing changed whether lm_head is tied")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(str(tmp)).eval()
        shapes = (reloaded.get_input_embeddings().weight.shape[0], reloaded.lm_head.weight.shape[0])
        if shapes != (rows, rows) or modeling.lm_head_is_tied(reloaded) != tied:
            raise RuntimeError(f"{out}: reloaded with embedding/lm_head rows {shapes} and lm_head "
                               f"{'tied' if modeling.lm_head_is_tied(reloaded) else 'untied'}; expected {rows} rows, "
                               f"{'tied' if tied else 'untied'}")
        with torch.no_grad():
            logits = reloaded(input_ids=encoder_ids, decoder_input_ids=decoder_ids).logits
        difference = float((logits - reference[..., :rows]).abs().max())
        if difference > 1e-4 * max(float(reference.abs().max()), 1.0):
            raise RuntimeError(f"{out}: logits differ from the full model's at the kept ids by {difference:g}")
        export = {"rows": rows, "dir": str(out), "parameters": modeling.count_parameters(reloaded)[0],
                  "config": {**json.loads((tmp / "config.json").read_text(encoding="utf-8")), "vocab_size": rows},
                  "tokenizer_size": len(tokenizer), "lm_head_tied": tied,
                  "dtype": str(next(reloaded.parameters()).dtype), "max_logit_difference": difference}
        del reloaded
        atomic_write_text(tmp / harness.BUILD_INFO, json.dumps({"recipe": plan["recipe"], "export": export}))
        swap_dir(tmp, out)
        built.append(export)
    if hasattr(os, "sync"):  # flush the saved weights now, not during the first timed run
        os.sync()
    return {"exports": built}


# ----------------------------------------------------------------------------------------------------
# the plain training loop: CPU time split, GPU step time and memory


def require_cuda() -> str:
    """The name of CUDA device 0.

    Raises:
        CudaUnavailable: torch sees no CUDA device (a CPU-only build or no GPU).
    """
    import torch

    if not torch.cuda.is_available():
        raise CudaUnavailable(f"--device cuda: torch {torch.__version__} sees no CUDA device (built with CUDA "
                              f"{torch.version.cuda or 'none'}); run the GPU section on a machine with a GPU")
    return torch.cuda.get_device_name(0)


def measure_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """Child entry: train ``spec["export"]`` for ``warmup_steps + steps`` optimizer steps in a plain loop on
    ``spec["device"]`` (``cpu``: fp32; ``cuda``: bf16 autocast, fp32 weights and optimizer state), timing each
    step's forward (with the loss), backward and optimizer step (clipping to 1.0, fused AdamW, zeroing).

    Batches are our loop's: ``seq2seq_data.tokenize_pairs`` of ``spec["train_file"]``, the length-grouped
    sampler seeded with ``spec["seed"]`` (epoch 0), the collator ``train_decoder`` uses (padding to a
    multiple of 8 under bf16). On CUDA every phase ends with ``torch.cuda.synchronize()`` and the peak is
    ``torch.cuda.max_memory_allocated()`` over the whole run (weights, gradients, optimizer state,
    activations).

    Returns ``{"device", "device_name", "steps": [{"forward_s", "backward_s", "optimizer_s", "total_s"}...],
    "batches", "losses", "peak_gpu_allocated_mb", "peak_gpu_reserved_mb", "weights_gpu_mb", "torch_threads"}``.

    Raises:
        CudaUnavailable: ``device`` is ``cuda`` and there is none.
        RuntimeError: the loaded model ties ``lm_head``; the pool gives fewer batches than asked for.
    """
    device_type = spec["device"]
    device_name = require_cuda() if device_type == "cuda" else "cpu"
    threads = harness.setup_torch(spec["threads"])
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from data_io import read_jsonl
    from modeling import get_tokenizer, lm_head_is_tied
    from seq2seq_data import IndexedSeq2SeqCollator, get_train_dataloader, tokenize_pairs

    bf16 = device_type == "cuda"
    cuda = device_type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokenizer = get_tokenizer(spec["export"])
    model = AutoModelForSeq2SeqLM.from_pretrained(spec["export"]).to(device_type).train()
    if lm_head_is_tied(model):
        raise RuntimeError(f"{spec['export']}: the loaded model ties lm_head (not the mt5-small shape)")
    weights_mb = None
    if cuda:  # the peak starts from the weights now in GPU memory (CUDA is initialised by the move)
        torch.cuda.reset_peak_memory_stats()
        weights_mb = torch.cuda.memory_allocated() / 2**20
    dataset = tokenize_pairs(read_jsonl(spec["train_file"]), tokenizer, max_source_length=spec["max_source_length"],
                             max_target_length=spec["max_target_length"])
    collator = IndexedSeq2SeqCollator(tokenizer, pad_to_multiple_of=8 if bf16 else None)
    loader = get_train_dataloader(dataset, collator, spec["batch_size"], seed=spec["seed"])
    loader.sampler.set_epoch(0)
    total = spec["warmup_steps"] + spec["steps"]
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == total:
            break
    if len(batches) < total:
        raise RuntimeError(f"{spec['train_file']}: {len(batches)} batches of {spec['batch_size']}, need {total}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=spec["learning_rate"], weight_decay=0.0, fused=True)
    steps, losses = [], []
    for batch in batches:
        inputs = {k: batch[k].to(device_type) for k in ("input_ids", "attention_mask", "labels")}
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        losses.append(loss.detach())
        steps.append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "total_s": t3 - t0})
    return {"device": device_type, "device_name": device_name, "steps": steps,
            "batches": [bench_train.batch_record(b) for b in batches],
            "losses": [float(x) for x in losses],  # note: a device sync point, after the timed steps
            "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
            "weights_gpu_mb": weights_mb, "torch_threads": threads, "bf16": bf16}


def summarise_steps(raw: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """Medians of the phases over the steps after ``warmup_steps``, samples/s over them, the peaks.

    Raises:
        ValueError: no step after the warm-up.
    """
    timed, measured = raw["steps"][warmup_steps:], raw["batches"][warmup_steps:]
    if not timed:
        raise ValueError(f"{len(raw['steps'])} steps recorded, none after {warmup_steps} warm-up")
    summary = {phase: statistics.median(s[phase] for s in timed)
               for phase in ("forward_s", "backward_s", "optimizer_s", "total_s")}
    seconds = sum(s["total_s"] for s in timed)
    summary.update(samples_per_s=sum(b["rows"] for b in measured) / seconds,
                   source_tokens_per_s=sum(b["source_tokens"] for b in measured) / seconds,
                   mean_padded_source_len=statistics.mean(b["source_len"] for b in measured),
                   mean_padded_target_len=statistics.mean(b["target_len"] for b in measured),
                   steps=len(timed))
    for key in ("peak_gpu_allocated_mb", "peak_gpu_reserved_mb", "weights_gpu_mb", "peak_rss_mb", "device_name"):
        summary[key] = raw.get(key)
    return summary


# ----------------------------------------------------------------------------------------------------
# ratios and verdicts


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """``{"median", "per_round"}`` of ``numerators[i] / denominators[i]`` (round i of each)."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} and {len(denominators)} rounds: need the same non-zero number")
    per_round = [a / b for a, b in zip(numerators, denominators)]
    return {"median": statistics.median(per_round), "per_round": per_round}


def verdict(value: float, target: float, at_least: bool, noise: float = 0.0) -> str:
    """``met``; ``not met, but within N% (measurement noise)`` when ``value`` misses ``target`` by less than
    the relative ``noise``; else ``MISSED``."""
    if value >= target if at_least else value <= target:
        return "met"
    if noise and (value >= target * (1 - noise) if at_least else value <= target * (1 + noise)):
        return f"not met, but within {noise:.0%} (measurement noise)"
    return "MISSED"


def pruned_ratios(training: dict[str, list[dict]], inference: dict[str, list[dict]], sizes: dict[str, int],
                  name: str) -> dict[str, dict[str, Any]]:
    """Ratios of model ``name`` against the full model (absent figures are left out):
    ``train_vs_full_ours`` / ``train_vs_full_hf_grouped`` (samples/s, higher is better), ``peak_rss`` (lower),
    ``export_size`` (lower), ``beam4_hf_speedup`` / ``beam4_ct2_speedup`` (full s/article over pruned s/article).

    ``training`` maps ``"MODEL/CONTENDER"`` and ``inference`` ``"MODEL/BACKEND"`` to per-round summaries
    (``samples_per_s``, ``peak_rss_mb``; ``seconds_per_article``); ``sizes`` maps models to export bytes.
    """
    def series(runs: dict[str, list[dict]], key: str, field: str) -> list[float]:
        return [r[field] for r in runs.get(key, [])]

    ratios: dict[str, dict[str, Any]] = {}
    ours = series(training, f"{name}/ours", "samples_per_s")
    for key, other in (("train_vs_full_ours", f"{FULL}/ours"), ("train_vs_full_hf_grouped", f"{FULL}/hf_grouped")):
        if ours and series(training, other, "samples_per_s"):
            ratios[key] = paired_ratio(ours, series(training, other, "samples_per_s"))
    if ours and series(training, f"{FULL}/ours", "peak_rss_mb"):
        ratios["peak_rss"] = paired_ratio(series(training, f"{name}/ours", "peak_rss_mb"),
                                          series(training, f"{FULL}/ours", "peak_rss_mb"))
    if name in sizes and FULL in sizes:
        ratios["export_size"] = paired_ratio([sizes[name]], [sizes[FULL]])
    for backend in BACKENDS:
        full, pruned = (series(inference, f"{m}/{backend}", "seconds_per_article") for m in (FULL, name))
        if full and pruned:
            ratios[f"beam4_{backend}_speedup"] = paired_ratio(full, pruned)
    return ratios


def verdicts(ratios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per :data:`TARGETS` row: ``{"label", "key", "target", "at_least", "value", "per_round",
    "verdict"}`` (``value`` None and verdict ``not measured`` when the figure is absent)."""
    out = []
    for label, key, target, at_least, noise in TARGETS:
        ratio = ratios.get(key)
        entry = {"label": label, "key": key, "target": target, "at_least": at_least,
                 "value": ratio["median"] if ratio else None, "per_round": ratio["per_round"] if ratio else []}
        entry["verdict"] = verdict(ratio["median"], target, at_least, noise) if ratio else "not measured"
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------------------
# the report


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _figure(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def verdict_line(entry: dict[str, Any]) -> str:
    sign = ">=" if entry["at_least"] else "<="
    if entry["value"] is None:
        return f"- {entry['label']}: target {sign} x{entry['target']:g}: not measured"
    rounds = (f" (rounds: {', '.join(f'{x:.2f}' for x in entry['per_round'])})"
              if len(entry["per_round"]) > 1 else "")
    return f"- {entry['label']}: x{entry['value']:.2f}{rounds}; target {sign} x{entry['target']:g}: {entry['verdict']}"


def decoding_ceiling_note(split: dict[str, dict[str, float]], new_tokens: int) -> str:
    """How to read the decoding split, per backend: the per-token cost that pruning to {VERDICT_KEPT} rows took
    away, what it left, and the speed-up of the smallest pruned model (how close to the vocabulary-free cost
    pruning further can get). Empty when the split lacks the full or the {VERDICT_KEPT} model."""
    target = model_name(VERDICT_KEPT)
    pruned = sorted((job.split("/")[0] for job in split if not job.startswith(FULL + "/")),
                    key=lambda n: int(n.split("-")[1]))
    notes = []
    for b in BACKENDS:
        full, kept = split.get(f"{FULL}/{b}"), split.get(f"{target}/{b}")
        if not full or not kept:
            continue

        line = (f"{b}: pruning to {VERDICT_KEPT:,} rows takes the cost of a token from {full['per_token_ms']:.1f} "
                f"to {kept['per_token_ms']:.1f} ms and the prefix from {full['prefix_s']:.3f} to "
                f"{kept['prefix_s']:.3f} s per article, x{full['total_s'] / kept['total_s']:.2f} over {new_tokens} "
                "tokens")
        smallest = split.get(f"{pruned[0]}/{b}") if pruned else None
        if smallest and pruned[0] != target:
            line += f"; {pruned[0]} gives x{full['total_s'] / smallest['total_s']:.2f}"
        notes.append(line + ".")
    return ("Reading: " + " ".join(notes) + " What pruning leaves (the prefix and the decoder layers) bounds the "
            "speed-up of a backend whose per-token cost is already small.") if notes else ""


def markdown_table(results: dict) -> str:
    """The figures as Markdown: models and sizes, CPU training, the step time split, beam-4 decoding, the
    ratios against the full model, the verdicts at :data:`VERDICT_KEPT` rows, and the GPU section."""
    s, models = results["settings"], results["models"]
    names = list(models)
    full = models[FULL]
    lines = [
        f"The full mt5-small shape (random weights, {full['rows']:,} vocabulary rows, untied lm_head) against the same "
        f"model with its embedding and lm_head rows sliced to the first K rows (`prune_vocab.slice_vocabulary`), "
        f"K = {', '.join(f'{k:,}' for k in s['kept'])}.",
        "",
        f"**The kept counts are chosen for the benchmark**: the real google/mt5-small vocabulary cannot be loaded "
        f"here, so the pruned models keep the first K rows of a random model, and one benchmark tokenizer "
        f"({s['tokenizer_size']:,} tokens, every id below the smallest K) serves every model. The count a real corpus "
        f"keeps is what `{DRY_RUN_COMMAND}` prints (kept pieces, embedding rows, corpus coverage); pick the row of "
        "the table nearest to it.",
        "",
        "| model | vocabulary rows | parameters | export size (MB, fp32) | x full | CTranslate2 int8 (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        m = models[name]
        lines.append(f"| {name} | {m['rows']:,} | {m['parameters'] / 1e6:.1f}M | {_mb(m['export_bytes'])} | "
                     f"{m['export_bytes'] / full['export_bytes']:.2f} | {_mb(m.get('ct2_bytes'))} |")
    training = results.get("training")
    if training:
        lines += ["", f"**Training, CPU fp32** (`bench_train.run_contender`): batch {s['batch_size']}, {s['steps']} "
                      f"steps timed after {s['warmup_steps']} warm-up, pools of {training['pool_size']} pairs (Sogou "
                      f"articles {s['long_fraction']:.0%} + CSL abstracts), source {s['max_source_length']} / title "
                      f"{s['max_target_length']} tokens, AdamW (fused) lr {s['learning_rate']:g}, {s['repeats']} "
                      "interleaved rounds (the order rotating), medians",
                  "",
                  "| model | contender | samples/s | source tokens/s | s/step | peak RSS (GiB) | padded source len | "
                  "padded title len |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, m in training["summary"].items():
            name, contender = key.split("/")
            lines.append(f"| {name} | {bench_train.LABELS[contender].split(' (')[0]} | {m['samples_per_s']:.2f} | "
                         f"{m['source_tokens_per_s']:,.0f} | {m['s_per_step']:.2f} | {m['peak_rss_mb'] / 1024:.2f} | "
                         f"{m['mean_padded_source_len']:.0f} | {m['mean_padded_target_len']:.0f} |")
        if training.get("identical_batches"):
            lines.append(f"\nAll models trained on identical batches in each round: "
                         f"{'yes' if all(training['identical_batches']) else 'NO'}")
    profile = results.get("profile")
    if profile:
        lines += ["", f"**Where a training step's time goes** (CPU fp32, a plain loop with the same optimizer on the "
                      f"same batches as round 1; median of {s['profile_steps']} steps after {s['warmup_steps']} "
                      "warm-up; the optimizer column is clipping + fused AdamW + zeroing)",
                  "",
                  "| model | forward + loss (s) | backward (s) | optimizer (s) | total (s/step) | samples/s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, p in profile["summary"].items():
            lines.append(f"| {name} | {p['forward_s']:.2f} | {p['backward_s']:.2f} | {p['optimizer_s']:.2f} | "
                         f"{p['total_s']:.2f} | {p['samples_per_s']:.2f} |")
        if "same_batches_as_ours" in profile:
            lines.append(f"\nSame batches as our loop's round 1: {'yes' if profile['same_batches_as_ours'] else 'NO'}")
    inference = results.get("inference")
    if inference:
        lines += ["", f"**Beam-4 decoding** (`bench_inference.measure`): {inference['articles']} Sogou articles "
                      f"(mean {inference['mean_source_tokens']:.0f} source tokens), exactly {s['new_tokens']} tokens "
                      f"each, batches of {s['inference_batch_size']}, {s['inference_repeats']} round(s), medians",
                  "",
                  "| model | hf s/article | ct2 s/article | hf peak RSS (MB) | ct2 peak RSS (MB) | tokens/article |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for name in names:
            row = {b: inference["summary"].get(f"{name}/{b}") for b in BACKENDS}
            if not any(row.values()):
                continue
            tokens = sorted({t for r in row.values() if r for t in r["tokens_per_article"]})
            lines.append(f"| {name} | {_figure(row['hf'] and row['hf']['seconds_per_article'], '{:.3f}')} | "
                         f"{_figure(row['ct2'] and row['ct2']['seconds_per_article'], '{:.3f}')} | "
                         f"{_figure(row['hf'] and row['hf']['peak_rss_mb'], '{:.0f}')} | "
                         f"{_figure(row['ct2'] and row['ct2']['peak_rss_mb'], '{:.0f}')} | {tokens} |")
        split = inference.get("split")
        if split:
            lines += ["", f"**Where the decoding time goes**: each run again with {s['split_new_tokens']} forced "
                          f"token(s); prefix = tokenization + encoder + those steps (s/article), per token = the "
                          f"cost of each further token (decoder layers, output projection over the vocabulary, "
                          f"softmax, beam bookkeeping; ms/article)",
                      "",
                      "| model | hf prefix (s) | hf per token (ms) | hf prefix share | ct2 prefix (s) | "
                      "ct2 per token (ms) | ct2 prefix share |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for name in names:
                cells = []
                for b in BACKENDS:
                    part = split.get(f"{name}/{b}")
                    cells += ([f"{part['prefix_s']:.3f}", f"{part['per_token_ms']:.1f}",
                               f"{part['prefix_share']:.0%}"] if part else ["-"] * 3)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines += ["", decoding_ceiling_note(split, s["new_tokens"])]
    ratios = results.get("ratios", {})
    if ratios:
        lines += ["", "**Against the full model** (medians of per-round ratios; speed-up = full s/article over pruned)",
                  "",
                  "| model | samples/s vs full (ours) | vs full (Seq2SeqTrainer grouped) | peak RSS | export size | "
                  "beam-4 hf speed-up | beam-4 ct2 speed-up |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in ratios.items():
            cells = [_figure(r[k]["median"] if k in r else None, "x{:.2f}") for k in
                     ("train_vs_full_ours", "train_vs_full_hf_grouped", "peak_rss", "export_size", "beam4_hf_speedup",
                      "beam4_ct2_speedup")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"**Verdicts at {VERDICT_KEPT:,} kept rows** against the full model in the same run:"]
    if results.get("verdicts"):
        lines += [verdict_line(v) for v in results["verdicts"]]
    else:
        lines.append(f"- not measured: {VERDICT_KEPT} is not among --kept")
    lines += ["", "**Training on a GPU, bf16** (step time and peak GPU memory of the full and pruned mt5-small "
                  "shapes):"]
    gpu = results.get("gpu") or {}
    if gpu.get("summary"):
        first = next(iter(gpu["summary"].values()))
        lines += [f"{first['device_name']}, batch {s['gpu_batch_size']}, bf16 autocast (fp32 weights and AdamW state), "
                  f"median of {s['gpu_steps']} steps after {s['gpu_warmup_steps']} warm-up; peak = "
                  "`torch.cuda.max_memory_allocated()` over the run",
                  "",
                  "| model | s/step | forward + loss (s) | backward (s) | optimizer (s) | samples/s | peak GPU memory "
                  "(GiB) | x full |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        full_peak = gpu["summary"].get(FULL, {}).get("peak_gpu_allocated_mb")
        for name, g in gpu["summary"].items():
            share = f"{g['peak_gpu_allocated_mb'] / full_peak:.2f}" if full_peak else "-"
            lines.append(f"| {name} | {g['total_s']:.3f} | {g['forward_s']:.3f} | {g['backward_s']:.3f} | "
                         f"{g['optimizer_s']:.3f} | {g['samples_per_s']:.1f} | "
                         f"{g['peak_gpu_allocated_mb'] / 1024:.2f} | {share} |")
    else:
        lines += [f"*Not measured here: {gpu.get('note') or 'no GPU run'}.* Placeholder for the figures a GPU "
                  "machine gives with `python -m bench.bench_prune --device cuda --skip_cpu` (s/step, "
                  "forward/backward/optimizer split, samples/s, peak `torch.cuda.max_memory_allocated`, per model)."]
    m = results["machine"]
    threads = sorted({r["torch_threads"] for rs in (training or {}).get("runs", {}).values() for r in rs})
    lines += ["", f"torch threads per training run: {', '.join(map(str, threads)) or '-'}; 1-minute load average "
                  f"at the end: {m['load_average'][0]:.2f} on {m['cpu_count']} CPUs"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# parent: build, run, summarise


def interleaved(jobs: Sequence[Any], rounds: int, run_one: Callable[[Any, int], dict]) -> dict[Any, list[dict]]:
    """``run_one(job, round)`` for every job in every round, the order rotating each round
    (``harness.rotation``); returns ``{job: [result of round 0, round 1, ...]}``."""
    results: dict[Any, list[dict]] = {job: [] for job in jobs}
    for round_index in range(rounds):
        for job in harness.rotation(list(jobs), round_index):
            results[job].append(run_one(job, round_index))
    return results


def bench_training(args: argparse.Namespace, exports: dict[str, harness.RandomExport], long: list[dict],
                   short: list[dict], work_dir: Path) -> dict[str, Any]:
    """Interleaved rounds of ``ours`` on every model and ``hf_grouped`` on the full one."""
    from data_io import write_jsonl_atomic

    pool_size = 4 * args.steps * args.batch_size  # as bench_train: mega-batches of `steps` batches
    env = {**harness.QUIET_ENV, **harness.thread_env(args.threads), **CPU_ONLY_ENV}
    pools: dict[int, Path] = {}
    batches: dict[int, dict[str, list]] = {}

    def pool(round_index: int) -> Path:
        if round_index not in pools:
            pools[round_index] = work_dir / f"prune-pool-{round_index}.jsonl"
            write_jsonl_atomic(pools[round_index], bench_train.draw_pool(long, short, pool_size, args.long_fraction,
                                                                         args.seed + round_index))
        return pools[round_index]

    def run_one(job: str, round_index: int) -> dict:
        name, contender = job.split("/")
        run = f"prune-{name}-{contender}-{round_index}"
        spec = {"contender": contender, "model_dir": str(exports[name].dir), "train_file": str(pool(round_index)),
                "output_dir": str(work_dir / run), "max_source_length": args.max_source_length,
                "max_target_length": args.max_target_length, "learning_rate": args.learning_rate,
                "seed": args.seed + round_index, "threads": args.threads, "batch_size": args.batch_size,
                "steps": args.steps, "warmup_steps": args.warmup_steps}
        shutil.rmtree(spec["output_dir"], ignore_errors=True)  # a kept --work_dir: start from nothing
        started = time.perf_counter()
        raw = harness.run_child("bench.bench_train:run_contender", spec, work_dir, run, timeout=args.child_timeout,
                                env=env)
        shutil.rmtree(spec["output_dir"], ignore_errors=True)  # metrics and logs only; keep the work dir small
        bench_train.check_raw(run, contender, raw)
        summary = bench_train.summarise_run(raw, args.warmup_steps, args.steps)
        batches.setdefault(round_index, {})[job] = raw["batches"][: args.warmup_steps + args.steps]
        print(f"  round {round_index + 1}/{args.repeats} {job:>22}: {summary['samples_per_s']:.2f} samples/s, "
              f"{summary['source_tokens_per_s']:,.0f} source tokens/s, {summary['s_per_step']:.2f} s/step, peak RSS "
              f"{summary['peak_rss_mb'] / 1024:.2f} GiB ({time.perf_counter() - started:.0f} s, load "
              f"{os.getloadavg()[0]:.1f})", flush=True)
        return {"round": round_index, **summary}

    jobs = [f"{FULL}/ours", f"{FULL}/hf_grouped"] + [f"{name}/ours" for name in exports if name != FULL]
    runs = interleaved(jobs, args.repeats, run_one)
    summary = {job: {key: statistics.median(r[key] for r in rs) for key in
                     ("samples_per_s", "source_tokens_per_s", "s_per_step", "peak_rss_mb", "mean_padded_source_len",
                      "mean_padded_target_len")} for job, rs in runs.items()}
    identical = [len({json.dumps(b) for b in per_job.values()}) == 1 for _, per_job in sorted(batches.items())]
    return {"pool_size": pool_size, "runs": runs, "summary": summary, "identical_batches": identical,
            "round_1_batches": batches.get(0, {}).get(f"{FULL}/ours"), "pool_files": [str(p) for p in pools.values()]}


def bench_steps(args: argparse.Namespace, exports: dict[str, harness.RandomExport], train_file: Path,
                work_dir: Path, *, device: str, batch_size: int, warmup_steps: int, steps: int,
                rounds: int = 1) -> dict[str, Any]:
    """:func:`measure_steps` on every model (``rounds`` interleaved rounds, medians of the phases)."""
    env = {**harness.QUIET_ENV, **harness.thread_env(args.threads), **(CPU_ONLY_ENV if device == "cpu" else {})}

    def run_one(name: str, round_index: int) -> dict:
        spec = {"export": str(exports[name].dir), "train_file": str(train_file), "device": device,
                "threads": args.threads, "batch_size": batch_size, "warmup_steps": warmup_steps, "steps": steps,
                "max_source_length": args.max_source_length, "max_target_length": args.max_target_length,
                "learning_rate": args.learning_rate, "seed": args.seed}
        raw = harness.run_child("bench.bench_prune:measure_steps", spec, work_dir,
                                f"steps-{device}-{name}-{round_index}", timeout=args.child_timeout, env=env)
        summary = summarise_steps(raw, warmup_steps)
        memory = (f"peak GPU memory {summary['peak_gpu_allocated_mb'] / 1024:.2f} GiB" if device == "cuda" else
                  f"peak RSS {summary['peak_rss_mb'] / 1024:.2f} GiB")
        print(f"  {device} steps {name:>13}: {summary['total_s']:.3f} s/step (forward {summary['forward_s']:.3f}, "
              f"backward {summary['backward_s']:.3f}, optimizer {summary['optimizer_s']:.3f}), {memory}", flush=True)
        return {**summary, "batches": raw["batches"], "losses": raw["losses"]}

    runs = interleaved(list(exports), rounds, run_one)
    summary = {name: {key: statistics.median(r[key] for r in rs) if isinstance(value, (int, float)) else value
                      for key, value in rs[0].items() if key not in ("batches", "losses")}
               for name, rs in runs.items()}
    return {"runs": runs, "summary": summary}


def bench_inference_beam4(args: argparse.Namespace, exports: dict[str, harness.RandomExport], articles: list[dict],
                          work_dir: Path) -> dict[str, Any]:
    """Beam-4 seconds per article of every (model, backend), through ``bench_inference.measure``."""
    from bench import bench_inference

    threads = args.threads or os.cpu_count() or 1
    texts = [r["maintext"] for r in articles[: args.num_articles]]
    import ct2_backend

    for name, export in exports.items():
        if not ct2_backend.is_fresh(ct2_backend.default_ct2_dir(export.dir, args.ct2_compute_type), export.dir,
                                    args.ct2_compute_type):
            started = time.perf_counter()
            harness.run_child("bench.bench_inference:convert_to_ct2",
                              {"export": str(export.dir), "compute_type": args.ct2_compute_type}, work_dir,
                              f"ct2-conversion-{name}", timeout=args.child_timeout, env=CPU_ONLY_ENV)
            print(f"  {name}: converted to CTranslate2 {args.ct2_compute_type} in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    env = {**harness.QUIET_ENV, **harness.thread_env(threads), **CPU_ONLY_ENV}

    def run_with(job: str, round_index: int, new_tokens: int) -> dict:
        name, backend = job.split("/")
        spec = {"engine": backend, "strategy": "beam4", "preset": "beam4", "export": str(exports[name].dir),
                "texts": texts, "batch_size": args.inference_batch_size, "max_source_length": args.max_source_length,
                "new_tokens": new_tokens, "threads": threads, "compute_type": args.ct2_compute_type}
        row = harness.run_child("bench.bench_inference:measure", spec, work_dir,
                                f"beam4-{name}-{backend}-{new_tokens}-{round_index}", timeout=args.child_timeout,
                                env=env)
        if row["tokens_per_article"] != [new_tokens]:
            raise RuntimeError(f"{job}: generated {row['tokens_per_article']} tokens per article, forced {new_tokens}")
        print(f"  round {round_index + 1}/{args.inference_repeats} beam4 {job:>18} x {new_tokens} tokens: "
              f"{row['seconds_per_article']:.3f} s/article, peak RSS {row['peak_rss_mb']:.0f} MB "
              f"(load {row['load_seconds']:.1f} s)", flush=True)
        return {"round": round_index, **row}

    jobs = [f"{name}/{backend}" for backend in BACKENDS for name in exports]
    runs = interleaved(jobs, args.inference_repeats, lambda job, i: run_with(job, i, args.new_tokens))
    summary = {job: {"seconds_per_article": statistics.median(r["seconds_per_article"] for r in rs),
                     "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                     "tokens_per_article": rs[0]["tokens_per_article"]} for job, rs in runs.items()}
    result = {"articles": len(texts), "mean_source_tokens": bench_inference.source_lengths(
        exports[FULL].dir, texts, args.max_source_length), "threads": threads, "runs": runs, "summary": summary}
    if args.split_new_tokens:  # parse_args keeps it below --new_tokens
        print(f"  where the decoding time goes: the same runs with {args.split_new_tokens} forced token(s)", flush=True)
        short = interleaved(jobs, args.inference_repeats, lambda job, i: run_with(job, i, args.split_new_tokens))
        result["split_runs"] = short
        result["split"] = decoding_split(summary, {job: statistics.median(r["seconds_per_article"] for r in rs)
                                                   for job, rs in short.items()},
                                         args.new_tokens, args.split_new_tokens)
    return result


def decoding_split(summary: dict[str, dict[str, Any]], short_seconds: dict[str, float], new_tokens: int,
                   short_tokens: int) -> dict[str, dict[str, float]]:
    """Where beam-search time goes, from two runs of each job: ``new_tokens`` and ``short_tokens`` forced tokens.

    Returns ``{job: {"total_s", "prefix_s", "per_token_ms", "prefix_share"}}``: ``total_s`` = seconds per
    article of the long run, ``prefix_s`` = of the short run (tokenization, the encoder and the first
    ``short_tokens`` steps), ``per_token_ms`` = the extra milliseconds per article per further token (decoder
    layers, the output projection over the vocabulary, softmax and beam bookkeeping), ``prefix_share`` =
    ``prefix_s / total_s``.

    Raises:
        ValueError: ``short_tokens >= new_tokens``.
    """
    if short_tokens >= new_tokens:
        raise ValueError(f"the split needs fewer forced tokens ({short_tokens}) than the timed runs ({new_tokens})")
    split = {}
    for job, seconds in short_seconds.items():
        full_run = summary[job]["seconds_per_article"]
        split[job] = {"total_s": full_run, "prefix_s": seconds, "prefix_share": seconds / full_run,
                      "per_token_ms": 1000 * (full_run - seconds) / (new_tokens - short_tokens)}
    return split


def bench(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    long = harness.read_data(args.data_dir, "sogou_news_smarty.jsonl")
    short = harness.read_data(args.data_dir, "csl_abstract_title.jsonl")
    print("building the full and pruned models", flush=True)
    texts = [r["maintext"] for r in long + short] + [r["title"] for r in long + short]  # bench_train's recipe
    full = harness.random_mt5_export(work_dir, texts, full_config(), args.vocab_size, args.seed, name="model-mt5-small",
                                     timeout=args.child_timeout)
    pruned = pruned_exports(work_dir, full, args.kept, timeout=args.child_timeout)
    exports = {FULL: full, **{model_name(k): e for k, e in pruned.items()}}
    settings = {k: getattr(args, k) for k in (
        "kept", "vocab_size", "repeats", "batch_size", "steps", "warmup_steps", "profile_steps", "max_source_length",
        "max_target_length", "long_fraction", "learning_rate", "seed", "num_articles", "inference_batch_size",
        "new_tokens", "inference_repeats", "split_new_tokens", "ct2_compute_type", "threads", "device",
        "gpu_batch_size", "gpu_steps", "gpu_warmup_steps", "skip_cpu")}
    settings["tokenizer_size"] = full.tokenizer_size
    results: dict[str, Any] = {"benchmark": "prune", "settings": settings}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not args.skip_cpu:
        print(f"training (CPU): {', '.join(exports)} x {args.repeats} rounds", flush=True)
        results["training"] = bench_training(args, exports, long, short, work_dir)
        timings["training_s"] = time.perf_counter() - started
        if args.profile_steps:
            started = time.perf_counter()
            print("where the step time goes (CPU, plain loop, round 1's pool)", flush=True)
            profile = bench_steps(args, exports, Path(results["training"]["pool_files"][0]), work_dir, device="cpu",
                                  batch_size=args.batch_size, warmup_steps=args.warmup_steps, steps=args.profile_steps)
            ours = results["training"]["round_1_batches"]
            n = min(len(ours or []), args.warmup_steps + args.profile_steps)
            profile["same_batches_as_ours"] = all(run[0]["batches"][:n] == ours[:n] for run in profile["runs"].values())
            results["profile"] = profile
            timings["profile_s"] = time.perf_counter() - started
        started = time.perf_counter()
        print(f"beam-4 decoding: {', '.join(exports)} x {', '.join(BACKENDS)}", flush=True)
        results["inference"] = bench_inference_beam4(args, exports, long, work_dir)
        timings["inference_s"] = time.perf_counter() - started
    gpu: dict[str, Any] = {}
    note = gpu_note(args.device, cuda_available())
    if note:
        gpu["note"] = note
        if args.device == "cuda":
            print(f"GPU section {note}", flush=True)
    else:
        from data_io import write_jsonl_atomic

        started = time.perf_counter()
        print("training (GPU, bf16)", flush=True)
        gpu_pool = work_dir / "prune-pool-gpu.jsonl"
        write_jsonl_atomic(gpu_pool, bench_train.draw_pool(long, short, (args.gpu_warmup_steps + args.gpu_steps) *
                                                           args.gpu_batch_size, args.long_fraction, args.seed))
        gpu.update(bench_steps(args, exports, gpu_pool, work_dir, device="cuda", batch_size=args.gpu_batch_size,
                               warmup_steps=args.gpu_warmup_steps, steps=args.gpu_steps))
        timings["gpu_s"] = time.perf_counter() - started
    results["gpu"] = gpu
    models = {}
    for name, export in exports.items():
        models[name] = {"rows": export.config["vocab_size"], "kept": None if name == FULL else int(name.split("-")[1]),
                        "parameters": export.parameters, "export_bytes": export_size_bytes(export.dir),
                        "ct2_bytes": directory_size_bytes(export.dir / f"ct2-{args.ct2_compute_type}"),
                        "dir": str(export.dir)}
    results["models"] = models
    sizes = {name: m["export_bytes"] for name, m in models.items()}
    results["ratios"] = {name: pruned_ratios((results.get("training") or {}).get("runs", {}),
                                             (results.get("inference") or {}).get("runs", {}), sizes, name)
                         for name in exports if name != FULL}
    target = model_name(VERDICT_KEPT)
    results["verdicts"] = verdicts(results["ratios"][target]) if target in results["ratios"] else []
    results["timings"] = timings
    return results


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_note(device: str, available: bool) -> str | None:
    """Why the GPU section is not measured (None: it is: ``--device cuda`` and a CUDA device)."""
    if device != "cuda":
        return "no GPU run (--device cpu)" + ("" if available else "; this machine has no GPU")
    if not available:
        return "skipped: --device cuda was given but torch sees no CUDA device on this machine"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.exit_on_sigterm()
    started = time.perf_counter()
    try:
        with harness.scratch_dir(args.work_dir, "bench_prune_") as work_dir:
            figures = bench(args, work_dir)
    except RuntimeError as err:  # a failed run (harness.ChildError) or a failed check
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {**figures, "machine": harness.machine(), "wall_s": time.perf_counter() - started}
    print()
    print(markdown_table(results))
    print(f"\ntotal {results['wall_s'] / 60:.1f} min")
    if args.json:
        harness.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

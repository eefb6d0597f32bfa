"""Inference speed and memory: naive one-by-one ``generate`` against our ``hf`` and ``ct2`` backends.

    PYTHONPATH=. python bench/bench_inference.py [--num_articles 64] [--naive_articles 16] [--json OUT]

Engines, each decoding greedy and beam 4:
- ``naive``: ``model.generate`` on one article at a time, fp32 (the usual homework loop);
- ``hf``: ``generation.generate_titles`` (what ``predict.py --backend hf`` runs): batches of
  ``--batch_size`` articles sorted by source length, fp32;
- ``ct2``: ``ct2_backend.CT2TitleGenerator`` (``predict.py --backend ct2``): CTranslate2 int8 on CPU,
  same length-sorted batches.

Method:
- Model: the published ``google/mt5-small`` shape (``modeling.MT5_SMALL_CONFIG``, vocab 250,112, untied
  ``lm_head``, 300M parameters) with random weights, built once with ``build_model_from_config`` and saved
  with ``save_pretrained``; ``torch.set_flush_denormal(True)`` everywhere (random weights otherwise hit
  subnormal slow paths). Tokenizer: sentencepiece unigram (``--vocab_size`` pieces) trained on the Sogou
  and LCSTS texts with ``modeling.train_sentencepiece_tokenizer``; the model keeps 250,112 rows.
- Data: the first ``--num_articles`` articles of ``sogou_news_smarty.jsonl`` (long news), sources
  truncated to ``--max_source_length`` tokens. ``naive`` runs on ``--naive_articles`` of them, evenly
  spaced through the list (it is the slow one); the mean source length of each subset is printed.
- Equal work: every engine generates exactly ``--new_tokens`` tokens per article (HF
  ``min_new_tokens = max_new_tokens``; CT2 ``min_decoding_length = max_decoding_length`` through our
  option mapping); the generated lengths are checked and reported. Beam 4 stops as with
  ``early_stopping=True``.
- Each (engine, strategy) runs in a fresh subprocess: model load is excluded from the timing, one short
  warm-up call precedes it, and the peak RSS reported is that process's ``ru_maxrss`` (model, tokenizer,
  libraries and decoding). The int8 conversion is done once beforehand, in its own subprocess, and timed
  separately. Threads: all cores (``--threads`` to change) for torch and CTranslate2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("naive", "hf", "ct2")
STRATEGIES = {"greedy": "greedy", "beam4": "beam4"}  # label -> preset in configs/generation_presets.json
TARGET_SPEEDUP = 3.0  # fastest of ours vs naive, beam 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with sogou_news_smarty.jsonl and lcsts_train.jsonl")
    parser.add_argument("--num_articles", type=int, default=64, help="articles for the hf and ct2 backends")
    parser.add_argument("--naive_articles", type=int, default=8,
                        help="articles for naive one-by-one generate (evenly spaced; keeps the default run short)")
    parser.add_argument("--batch_size", type=int, default=8, help="articles per batch (hf, ct2)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per article (forced)")
    parser.add_argument("--max_source_length", type=int, default=512)
    parser.add_argument("--vocab_size", type=int, default=32000, help="sentencepiece pieces of the tokenizer")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--ct2_compute_type", default="int8", help="CTranslate2 quantization")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per engine")
    parser.add_argument("--work_dir", type=Path, default=None,
                        help="keep the tokenizer, model and conversion here and reuse them (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--prepare_worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    for name in ("num_articles", "naive_articles", "batch_size", "new_tokens", "max_source_length", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------- setup

def prepare(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the tokenizer, build and save the model, convert it; each step skipped when already done."""
    export = work / "export"
    info: dict[str, Any] = {}
    if not (export / "model.safetensors").exists():
        start = time.perf_counter()
        spec = {"export": str(export), "data_dir": str(args.data_dir), "vocab_size": args.vocab_size}
        _run_child(["--prepare_worker", _write_spec(work / "prepare.json", spec)])
        info["build_seconds"] = time.perf_counter() - start
    if "ct2" in args.engines:
        import ct2_backend

        target = ct2_backend.default_ct2_dir(export, args.ct2_compute_type)
        if not ct2_backend.is_fresh(target, export, args.ct2_compute_type):
            start = time.perf_counter()
            code = ("import sys, ct2_backend; "
                    f"ct2_backend.convert_export({str(export)!r}, {args.ct2_compute_type!r})")
            subprocess.run([sys.executable, "-c", code], check=True, env=_child_env())
            info["ct2_conversion_seconds"] = time.perf_counter() - start
    return info


def prepare_worker(spec: dict[str, Any]) -> None:
    """Child: tokenizer + random mt5-small-shaped model, saved with ``save_pretrained``."""
    import torch

    from modeling import MT5_SMALL_CONFIG, build_model_from_config, count_parameters, lm_head_is_tied, \
        train_sentencepiece_tokenizer

    torch.set_flush_denormal(True)
    data = Path(spec["data_dir"])
    texts = [t for r in read_jsonl(data / "sogou_news_smarty.jsonl") + read_jsonl(data / "lcsts_train.jsonl")
             for t in (r["maintext"], r["title"])]
    export = Path(spec["export"])
    tokenizer = train_sentencepiece_tokenizer(texts, export, vocab_size=spec["vocab_size"])
    torch.manual_seed(0)
    model = build_model_from_config(dict(MT5_SMALL_CONFIG))
    assert not lm_head_is_tied(model) and model.config.vocab_size == 250112
    model.save_pretrained(str(export))
    tokenizer.save_pretrained(str(export))
    print(f"built mt5-small shape: {count_parameters(model)[0] / 1e6:.0f}M parameters, "
          f"tokenizer {len(tokenizer)} tokens", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- measure

def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: load one engine, warm up, time one strategy, report seconds/article and peak RSS."""
    import torch

    torch.set_flush_denormal(True)
    torch.set_num_threads(spec["threads"])
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    from generation import clean_title, generate_titles, resolve_generation_config
    from modeling import get_tokenizer

    export = Path(spec["export"])
    texts = spec["texts"]
    start = time.perf_counter()
    tokenizer = get_tokenizer(str(export))
    base = GenerationConfig.from_pretrained(str(export))
    n = spec["new_tokens"]
    config = resolve_generation_config(base, spec["preset"], {"max_new_tokens": n, "min_new_tokens": n})
    warm = resolve_generation_config(base, spec["preset"], {"max_new_tokens": 2, "min_new_tokens": 2})
    common = dict(batch_size=spec["batch_size"], max_source_length=spec["max_source_length"])
    lengths: list[int] = []
    if spec["engine"] == "ct2":
        from ct2_backend import CT2TitleGenerator, default_ct2_dir

        generator = CT2TitleGenerator(default_ct2_dir(export, spec["compute_type"]), tokenizer,
                                      intra_threads=spec["threads"])
        load = time.perf_counter() - start
        generator.generate_ids(texts[:1], warm, **common)
        start = time.perf_counter()
        ids = generator.generate_ids(texts, config, **common)
        seconds = time.perf_counter() - start
        lengths = [len(x) for x in ids]
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(export)).eval()
        load = time.perf_counter() - start
        if spec["engine"] == "hf":
            generate_titles(model, tokenizer, texts[:1], warm, **common)
            plain_generate = model.generate

            def counting_generate(*a, **k):  # record the generated lengths (minus the decoder start token)
                out = plain_generate(*a, **k)
                lengths.extend([out.shape[1] - 1] * out.shape[0])
                return out

            model.generate = counting_generate
            start = time.perf_counter()
            generate_titles(model, tokenizer, texts, config, **common)
            seconds = time.perf_counter() - start
        else:
            def one(text: str, cfg) -> list[int]:
                enc = tokenizer([text], truncation=True, max_length=spec["max_source_length"], return_tensors="pt")
                with torch.no_grad():
                    out = model.generate(**enc, generation_config=cfg)
                clean_title(tokenizer.decode(out[0], skip_special_tokens=True))
                return out[0].tolist()[1:]

            one(texts[0], warm)
            start = time.perf_counter()
            lengths = [len(one(t, config)) for t in texts]
            seconds = time.perf_counter() - start
    return {"engine": spec["engine"], "strategy": spec["strategy"], "articles": len(texts),
            "seconds": seconds, "seconds_per_article": seconds / len(texts), "load_seconds": load,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens_per_article": sorted(set(lengths))}


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                                     if os.environ.get("PYTHONPATH") else "")}


def _write_spec(path: Path, spec: dict[str, Any]) -> str:
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return str(path)


def _run_child(extra: list[str]) -> str:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *extra], env=_child_env(),
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {' '.join(extra)} failed with status {proc.returncode}")
    return proc.stdout


def source_lengths(export: Path, texts: list[str], max_source_length: int) -> float:
    from modeling import get_tokenizer

    tokenizer = get_tokenizer(str(export))
    ids = tokenizer(texts, truncation=True, max_length=max_source_length)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker.read_text(encoding="utf-8")))))
        return 0
    if args.prepare_worker:
        prepare_worker(json.loads(args.prepare_worker.read_text(encoding="utf-8")))
        return 0

    import ctranslate2
    import torch
    import transformers

    articles = read_jsonl(args.data_dir / "sogou_news_smarty.jsonl")[: args.num_articles]
    texts = [r["maintext"] for r in articles]
    step = max(len(texts) // min(args.naive_articles, len(texts)), 1)
    naive_texts = texts[::step][: args.naive_articles]
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_inference-")
        work = Path(tmp.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        total_start = time.perf_counter()
        setup = prepare(work, args)
        export = work / "export"
        mean_len = {"all": source_lengths(export, texts, args.max_source_length),
                    "naive": source_lengths(export, naive_texts, args.max_source_length)}
        print(f"mt5-small shape (random weights), {len(texts)} Sogou articles (mean {mean_len['all']:.0f} source "
              f"tokens; naive on {len(naive_texts)} of them, mean {mean_len['naive']:.0f}), "
              f"{args.new_tokens} new tokens forced, batch {args.batch_size}, {args.threads} threads", flush=True)
        results = []
        for strategy in args.strategies:
            for engine in args.engines:
                spec = {"engine": engine, "strategy": strategy, "preset": STRATEGIES[strategy],
                        "export": str(export), "texts": naive_texts if engine == "naive" else texts,
                        "batch_size": args.batch_size, "max_source_length": args.max_source_length,
                        "new_tokens": args.new_tokens, "threads": args.threads, "compute_type": args.ct2_compute_type}
                out = _run_child(["--worker", _write_spec(work / f"{engine}-{strategy}.json", spec)])
                row = json.loads(out.strip().splitlines()[-1])
                results.append(row)
                print(f"  {strategy:6s} {engine:5s}: {row['seconds_per_article']:.3f} s/article over "
                      f"{row['articles']} articles, peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"(load {row['load_seconds']:.1f} s, tokens/article {row['tokens_per_article']})", flush=True)
        speedups = {}
        for strategy in args.strategies:
            by_engine = {r["engine"]: r["seconds_per_article"] for r in results if r["strategy"] == strategy}
            if "naive" in by_engine:
                speedups[strategy] = {e: by_engine["naive"] / s for e, s in by_engine.items() if e != "naive"}
        print()
        print("| strategy | engine | articles | s/article | speed-up vs naive | peak RSS (MB) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in results:
            ratio = speedups.get(r["strategy"], {}).get(r["engine"])
            print(f"| {r['strategy']} | {r['engine']} | {r['articles']} | {r['seconds_per_article']:.3f} | "
                  f"{'1.00' if r['engine'] == 'naive' else (f'{ratio:.2f}' if ratio else '-')} | "
                  f"{r['peak_rss_mb']:.0f} |")
        verdict = None
        if "beam4" in speedups and speedups["beam4"]:
            best = max(speedups["beam4"], key=speedups["beam4"].get)
            verdict = {"fastest": best, "speedup": speedups["beam4"][best], "target": TARGET_SPEEDUP,
                       "met": speedups["beam4"][best] >= TARGET_SPEEDUP}
            print(f"\nbeam4: fastest of ours is {best}, {verdict['speedup']:.2f}x naive "
                  f"(target {TARGET_SPEEDUP}x: {'met' if verdict['met'] else 'NOT met'})")
        if "naive" in args.engines and len(naive_texts) < len(texts):
            print(f"note: naive was timed on {len(naive_texts)} of the {len(texts)} articles (every {step}th).")
        report = {
            "benchmark": "inference", "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                  "python": platform.python_version()},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "ctranslate2": ctranslate2.__version__},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("worker", "prepare_worker", "json")},
            "mean_source_tokens": mean_len, "setup": setup, "results": results, "speedup_vs_naive": speedups,
            "beam4_target": verdict, "total_seconds": time.perf_counter() - total_start,
            "load_average": {"before": load_before, "after": os.getloadavg()},
        }
        if args.json:
            from data_io import atomic_write_text

            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"total {report['total_seconds']:.0f} s; 1-minute load average {load_before[0]:.1f} before, "
              f"{report['load_average']['after'][0]:.1f} after ({os.cpu_count()} CPUs; other jobs skew the figures)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference speed and memory: naive one-by-one ``generate`` against our ``hf`` and ``ct2`` backends.

    python -m bench.bench_inference [--num_articles 64] [--naive_articles 8] [--threads T] [--json OUT]
                                    [--work_dir DIR]

Engines, each decoding greedy and beam 4:
- ``naive``: ``model.generate`` on one article at a time, fp32 (the usual homework loop);
- ``hf``: ``generation.generate_titles`` (what ``predict.py --backend hf`` runs): batches of
  ``--batch_size`` articles sorted by source length, fp32;
- ``ct2``: ``ct2_backend.CT2TitleGenerator`` (``predict.py --backend ct2``): CTranslate2 int8 on CPU,
  same length-sorted batches.

Method:
- Model: the published ``google/mt5-small`` shape (``modeling.MT5_SMALL_CONFIG``, vocab 250,112, untied
  ``lm_head``, 300M parameters) with random weights, built once with ``build_model_from_config`` and saved
  with ``save_pretrained`` (``harness.random_mt5_export``, reused from ``--work_dir`` when the recipe
  matches); ``torch.set_flush_denormal(True)`` everywhere (random weights otherwise hit subnormal slow
  paths). Tokenizer: sentencepiece unigram (``--vocab_size`` pieces) trained on the Sogou and LCSTS texts
  with ``modeling.train_sentencepiece_tokenizer``; the model keeps 250,112 rows.
- Data: the first ``--num_articles`` articles of ``sogou_news_smarty.jsonl`` (long news), sources
  truncated to ``--max_source_length`` tokens (default: the export's, ``export.TitleConfig``). ``naive``
  runs on ``--naive_articles`` of them, evenly spaced through the list (it is the slow one); the mean
  source length of each subset is printed.
- Equal work: every engine generates exactly ``--new_tokens`` tokens per article (HF
  ``min_new_tokens = max_new_tokens``; CT2 ``min_decoding_length = max_decoding_length`` through our
  option mapping); the generated lengths are checked and reported. Beam 4 stops as with
  ``early_stopping=True``.
- Each (engine, strategy) runs in a fresh subprocess (``harness.run_child``): model load is excluded from
  the timing, one short warm-up call precedes it, and the peak RSS reported is that process's own
  (``harness.peak_rss_mb``: model, tokenizer, libraries and decoding). The int8 conversion is done once
  beforehand, in its own subprocess, and timed separately. Threads: all cores (``--threads`` to change) for torch and
  CTranslate2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness

ENGINES = ("naive", "hf", "ct2")
STRATEGIES = {"greedy": "greedy", "beam4": "beam4"}  # label -> preset in configs/generation_presets.json
TARGET_SPEEDUP = 3.0  # fastest of ours vs naive, beam 4
MODEL_SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, data_help="folder with sogou_news_smarty.jsonl and lcsts_train.jsonl",
                                 threads_default=os.cpu_count() or 1, child_timeout=1800)
    parser.add_argument("--num_articles", type=int, default=64, help="articles for the hf and ct2 backends")
    parser.add_argument("--naive_articles", type=int, default=8,
                        help="articles for naive one-by-one generate (evenly spaced; keeps the default run short)")
    parser.add_argument("--batch_size", type=int, default=8, help="articles per batch (hf, ct2)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per article (forced)")
    parser.add_argument("--max_source_length", type=int, default=None,
                        help="source truncation in tokens (default: the export's title_config.json, else 512)")
    parser.add_argument("--vocab_size", type=int, default=32000, help="sentencepiece pieces of the tokenizer")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--ct2_compute_type", default="int8", help="CTranslate2 quantization")
    args = parser.parse_args(argv)
    harness.check_common_arguments(parser, args)
    for name in ("num_articles", "naive_articles", "batch_size", "new_tokens", "max_source_length"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


# ----------------------------------------------------------------------------------------------- children

def convert_to_ct2(spec: dict[str, Any]) -> dict[str, Any]:
    """Child entry: the CTranslate2 conversion of the export (cached inside it)."""
    import ct2_backend

    return {"ct2_dir": str(ct2_backend.convert_export(spec["export"], spec["compute_type"]))}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child entry: load one engine, warm up, time one strategy, report seconds/article."""
    harness.setup_torch(spec["threads"])
    import torch
    from transformers import GenerationConfig

    from export import load_model
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
        model = load_model(export)  # a prompt-tuned export with its soft prompt (export.load_model)
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
            "tokens_per_article": sorted(set(lengths))}


# ----------------------------------------------------------------------------------------------- parent

def source_lengths(export: Path, texts: list[str], max_source_length: int) -> float:
    from modeling import get_tokenizer

    tokenizer = get_tokenizer(str(export))
    ids = tokenizer(texts, truncation=True, max_length=max_source_length)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def speedups_vs_naive(results: list[dict]) -> dict[str, dict[str, float]]:
    """``{strategy: {engine: naive s/article / engine s/article}}`` for the strategies naive ran."""
    speedups = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        by_engine = {r["engine"]: r["seconds_per_article"] for r in results if r["strategy"] == strategy}
        if "naive" in by_engine:
            speedups[strategy] = {e: by_engine["naive"] / s for e, s in by_engine.items() if e != "naive"}
    return speedups


def markdown_table(report: dict) -> str:
    """The figures as Markdown: one row per (strategy, engine), then the beam-4 verdict."""
    speedups = report["speedup_vs_naive"]
    lines = ["| strategy | engine | articles | s/article | speed-up vs naive | peak RSS (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        ratio = speedups.get(r["strategy"], {}).get(r["engine"])
        lines.append(f"| {r['strategy']} | {r['engine']} | {r['articles']} | {r['seconds_per_article']:.3f} | "
                     f"{'1.00' if r['engine'] == 'naive' else (f'{ratio:.2f}' if ratio else '-')} | "
                     f"{r['peak_rss_mb']:.0f} |")
    verdict = report["beam4_target"]
    if verdict:
        lines += ["", f"beam4: fastest of ours is {verdict['fastest']}, {verdict['speedup']:.2f}x naive "
                      f"(target {verdict['target']}x: {'met' if verdict['met'] else 'NOT met'})"]
    c = report["config"]
    if "naive" in c["engines"] and report["naive_articles"] < report["articles"]:
        lines += ["", f"note: naive was timed on {report['naive_articles']} of the {report['articles']} articles "
                      f"(every {report['naive_step']}th)."]
    return "\n".join(lines)


def bench(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    from export import TitleConfig
    from modeling import MT5_SMALL_CONFIG

    articles = harness.read_data(args.data_dir, "sogou_news_smarty.jsonl")
    lcsts = harness.read_data(args.data_dir, "lcsts_train.jsonl")
    texts = [r["maintext"] for r in articles[: args.num_articles]]
    step = max(len(texts) // min(args.naive_articles, len(texts)), 1)
    naive_texts = texts[::step][: args.naive_articles]
    setup: dict[str, float] = {}
    export = harness.random_mt5_export(work_dir, [t for r in articles + lcsts for t in (r["maintext"], r["title"])],
                                       MT5_SMALL_CONFIG, args.vocab_size, MODEL_SEED, timeout=args.child_timeout)
    if export.build_s is not None:
        setup["build_seconds"] = export.build_s
    if "ct2" in args.engines:
        import ct2_backend

        if not ct2_backend.is_fresh(ct2_backend.default_ct2_dir(export.dir, args.ct2_compute_type), export.dir,
                                    args.ct2_compute_type):
            start = time.perf_counter()
            harness.run_child("bench.bench_inference:convert_to_ct2",
                              {"export": str(export.dir), "compute_type": args.ct2_compute_type}, work_dir,
                              "ct2-conversion", timeout=args.child_timeout)
            setup["ct2_conversion_seconds"] = time.perf_counter() - start
    max_source_length = args.max_source_length or TitleConfig.load(export.dir).max_source_length
    mean_len = {"all": source_lengths(export.dir, texts, max_source_length),
                "naive": source_lengths(export.dir, naive_texts, max_source_length)}
    print(f"mt5-small shape (random weights), {len(texts)} Sogou articles (mean {mean_len['all']:.0f} source "
          f"tokens; naive on {len(naive_texts)} of them, mean {mean_len['naive']:.0f}), "
          f"{args.new_tokens} new tokens forced, batch {args.batch_size}, {args.threads} threads", flush=True)
    results = []
    for strategy in args.strategies:
        for engine in args.engines:
            spec = {"engine": engine, "strategy": strategy, "preset": STRATEGIES[strategy],
                    "export": str(export.dir), "texts": naive_texts if engine == "naive" else texts,
                    "batch_size": args.batch_size, "max_source_length": max_source_length,
                    "new_tokens": args.new_tokens, "threads": args.threads, "compute_type": args.ct2_compute_type}
            row = harness.run_child("bench.bench_inference:measure", spec, work_dir, f"{engine}-{strategy}",
                                    timeout=args.child_timeout)
            results.append(row)
            print(f"  {strategy:6s} {engine:5s}: {row['seconds_per_article']:.3f} s/article over "
                  f"{row['articles']} articles, peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"(load {row['load_seconds']:.1f} s, tokens/article {row['tokens_per_article']})", flush=True)
    speedups = speedups_vs_naive(results)
    verdict = None
    if speedups.get("beam4"):
        best = max(speedups["beam4"], key=speedups["beam4"].get)
        verdict = {"fastest": best, "speedup": speedups["beam4"][best], "target": TARGET_SPEEDUP,
                   "met": speedups["beam4"][best] >= TARGET_SPEEDUP}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
    return {"benchmark": "inference", "config": {**config, "max_source_length": max_source_length},
            "model": export.to_json(), "articles": len(texts), "naive_articles": len(naive_texts), "naive_step": step,
            "mean_source_tokens": mean_len, "setup": setup, "results": results, "speedup_vs_naive": speedups,
            "beam4_target": verdict}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.exit_on_sigterm()
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        with harness.scratch_dir(args.work_dir, "bench_inference_") as work_dir:
            figures = bench(args, work_dir)
    except RuntimeError as err:  # a failed run (harness.ChildError)
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = {**figures, "total_seconds": time.perf_counter() - started, "machine": harness.machine(),
              "load_average": {"before": load_before, "after": os.getloadavg()}}
    print()
    print(markdown_table(report))
    if args.json:
        harness.write_json(args.json, report)
    print(f"total {report['total_seconds']:.0f} s; 1-minute load average {load_before[0]:.1f} before, "
          f"{report['load_average']['after'][0]:.1f} after ({os.cpu_count()} CPUs; other jobs skew the figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

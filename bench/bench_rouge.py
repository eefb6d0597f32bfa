"""Throughput of ``tw_rouge.get_rouge`` against the plain ``rouge`` package, in pairs per second.

    python -m bench.bench_rouge [--data_dir ../shared/data] [--num_pairs 5000] [--json OUT]

Pairs: the first ``--num_pairs`` records of ``lcsts_train.jsonl``; prediction = the first 20 characters
of the article (the lead baseline), reference = the title. For each segmenter (jieba, char):
- cold: one ``get_rouge`` call on a fresh segmenter instance (segmentation of every text included);
- warm: the same call again, every text already in the segmenter's cache (median of ``--repeats``);
- rouge: ``rouge.Rouge().get_scores`` on the same texts pre-joined with that segmenter (median of
  ``--repeats``), i.e. the scoring cost alone.
jieba's one-off dictionary load is timed separately and kept out of the cold figure.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness

SEGMENTERS = ("jieba", "char")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_arguments(parser, data_help="folder holding lcsts_train.jsonl", work_dir=False, threads=False)
    parser.add_argument("--num_pairs", type=int, default=5000, help="pairs to score (default 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each warm measurement (median)")
    args = parser.parse_args(argv)
    harness.check_common_arguments(parser, args)
    if args.num_pairs <= 0 or args.repeats <= 0:
        parser.error("--num_pairs and --repeats must be positive")
    return args


def load_pairs(data_dir: Path, num_pairs: int) -> tuple[list[str], list[str]]:
    """``(preds, refs)``: lead-20 predictions and titles of the first ``num_pairs`` lcsts_train records.

    Raises:
        SystemExit: the data file is absent, malformed or holds fewer than ``num_pairs`` records.
    """
    records = harness.read_data(data_dir, "lcsts_train.jsonl")
    if len(records) < num_pairs:
        raise SystemExit(f"error: {data_dir / 'lcsts_train.jsonl'} has {len(records)} records, fewer than "
                         f"--num_pairs {num_pairs}")
    records = records[:num_pairs]
    return [r["maintext"][:20] for r in records], [r["title"] for r in records]


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    """``(seconds, result)`` of one ``fn(*args, **kwargs)`` call, wall clock (after a garbage collection, so
    earlier garbage is not billed)."""
    gc.collect()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def bench(preds: list[str], refs: list[str], repeats: int) -> dict:
    """All figures as a JSON-ready dict (times in seconds, throughputs in pairs per second)."""
    from rouge import Rouge

    from tw_rouge import CharSegmenter, JiebaSegmenter, get_rouge

    n = len(preds)
    results: dict = {"num_pairs": n, "repeats": repeats, "segmenters": {}}

    import jieba

    results["jieba_dictionary_load_s"] = timed(jieba.initialize)[0]
    rouge = Rouge()
    for name, make in (("jieba", JiebaSegmenter), ("char", CharSegmenter)):
        segmenter = make()  # fresh instance: empty per-text cache
        cold, scores = timed(get_rouge, preds, refs, segmenter=segmenter)
        joined_preds, joined_refs = segmenter.join(preds), segmenter.join(refs)
        warm_runs, plain_runs = [], []
        for _ in range(repeats):  # interleaved, so background load hits both alike
            warm_runs.append(timed(get_rouge, preds, refs, segmenter=segmenter)[0])
            plain_runs.append(timed(rouge.get_scores, joined_preds, joined_refs, avg=True)[0])
        warm, plain = statistics.median(warm_runs), statistics.median(plain_runs)
        # The speed comparison is only meaningful if both compute the same numbers.
        same = scores == rouge.get_scores(joined_preds, joined_refs, avg=True)
        results["segmenters"][name] = {
            "cold_s": cold,
            "warm_s": warm,
            "rouge_prejoined_s": plain,
            "cold_pairs_per_s": n / cold,
            "warm_pairs_per_s": n / warm,
            "rouge_prejoined_pairs_per_s": n / plain,
            "rouge_1_f": scores["rouge-1"]["f"],
            "equal_to_rouge_package": same,
        }
    return results


def markdown_table(results: dict) -> str:
    lines = [
        f"ROUGE throughput, {results['num_pairs']:,} lcsts_train pairs (lead-20 vs title), pairs/s "
        f"(warm and rouge: median of {results['repeats']})",
        "",
        "| segmenter | get_rouge cold | get_rouge warm | rouge pkg, pre-joined | ROUGE-1 F | equal to rouge |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name, r in results["segmenters"].items():
        lines.append(f"| {name} | {r['cold_pairs_per_s']:,.0f} | {r['warm_pairs_per_s']:,.0f} | "
                     f"{r['rouge_prejoined_pairs_per_s']:,.0f} | {r['rouge_1_f']:.4f} | "
                     f"{'yes' if r['equal_to_rouge_package'] else 'NO'} |")
    lines += ["", "jieba dictionary load (once per process, not in 'cold'): "
                  f"{results['jieba_dictionary_load_s']:.2f} s",
              f"1-minute load average at the end: {results['machine']['load_average'][0]:.2f} "
              f"on {results['machine']['cpu_count']} CPUs"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preds, refs = load_pairs(args.data_dir, args.num_pairs)
    figures = bench(preds, refs, args.repeats)
    results = {"benchmark": "rouge", **figures, "machine": harness.machine()}
    print(markdown_table(results))
    if args.json:
        harness.write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0 if all(r["equal_to_rouge_package"] for r in results["segmenters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

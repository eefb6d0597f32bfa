"""Throughput of ``tw_rouge.get_rouge`` against the plain ``rouge`` package, in pairs per second.

    PYTHONPATH=. python bench/bench_rouge.py [--data-dir ../shared/data] [--num-pairs 5000] [--json OUT]

Pairs: the first ``--num-pairs`` records of ``lcsts_train.jsonl``; prediction = the first 20 characters
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
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEGMENTERS = ("jieba", "char")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding lcsts_train.jsonl (default: ../shared/data next to the repo)")
    parser.add_argument("--num-pairs", type=int, default=5000, help="pairs to score (default 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each warm measurement (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.num_pairs <= 0 or args.repeats <= 0:
        parser.error("--num-pairs and --repeats must be positive")
    return args


def load_pairs(data_dir: Path, num_pairs: int) -> tuple[list[str], list[str]]:
    """``(preds, refs)``: lead-20 predictions and titles of the first ``num_pairs`` lcsts_train records.

    Raises:
        SystemExit: the data file is absent or holds fewer than ``num_pairs`` records.
    """
    from data_io import DataError, read_jsonl

    path = data_dir / "lcsts_train.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass --data-dir pointing at the shared data folder "
                         "(the one with lcsts_train.jsonl)")
    try:
        records = read_jsonl(path)
    except DataError as err:
        raise SystemExit(f"error: {err}") from err
    if len(records) < num_pairs:
        raise SystemExit(f"error: {path} has {len(records)} records, fewer than --num-pairs {num_pairs}")
    records = records[:num_pairs]
    return [r["maintext"][:20] for r in records], [r["title"] for r in records]


def timed(fn) -> float:
    """Wall-clock seconds of one ``fn()`` call (after a garbage collection, so earlier garbage is not billed)."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(preds: list[str], refs: list[str], repeats: int) -> dict:
    """All figures as a JSON-ready dict (times in seconds, throughputs in pairs per second)."""
    from rouge import Rouge

    from tw_rouge import CharSegmenter, JiebaSegmenter, get_rouge

    n = len(preds)
    results: dict = {"num_pairs": n, "repeats": repeats, "segmenters": {}}

    import jieba

    results["jieba_dictionary_load_s"] = timed(jieba.initialize)
    rouge = Rouge()
    for name, make in (("jieba", JiebaSegmenter), ("char", CharSegmenter)):
        segmenter = make()  # fresh instance: empty per-text cache
        scores: list[dict] = []
        cold = timed(lambda: scores.append(get_rouge(preds, refs, segmenter=segmenter)))
        joined_preds, joined_refs = segmenter.join(preds), segmenter.join(refs)
        warm_runs, plain_runs = [], []
        for _ in range(repeats):  # interleaved, so background load hits both alike
            warm_runs.append(timed(lambda: get_rouge(preds, refs, segmenter=segmenter)))
            plain_runs.append(timed(lambda: rouge.get_scores(joined_preds, joined_refs, avg=True)))
        warm, plain = statistics.median(warm_runs), statistics.median(plain_runs)
        # The speed comparison is only meaningful if both compute the same numbers.
        same = scores[0] == rouge.get_scores(joined_preds, joined_refs, avg=True)
        results["segmenters"][name] = {
            "cold_s": cold,
            "warm_s": warm,
            "rouge_prejoined_s": plain,
            "cold_pairs_per_s": n / cold,
            "warm_pairs_per_s": n / warm,
            "rouge_prejoined_pairs_per_s": n / plain,
            "rouge_1_f": scores[0]["rouge-1"]["f"],
            "equal_to_rouge_package": same,
        }
    return results


def environment() -> dict:
    versions = {}
    for package in ("rouge", "jieba"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0], **versions}  # other jobs on the machine skew timings


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
    lines += ["", f"jieba dictionary load (once per process, not in 'cold'): {results['jieba_dictionary_load_s']:.2f} s",
              f"1-minute load average at the end: {results['environment']['load_average_1min']:.2f} "
              f"on {results['environment']['cpu_count']} CPUs"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # run as a script from anywhere: import the repo's packages
        sys.path.insert(0, str(REPO))
    preds, refs = load_pairs(args.data_dir, args.num_pairs)
    figures = bench(preds, refs, args.repeats)
    results = {"benchmark": "rouge", "environment": environment(), **figures}
    print(markdown_table(results))
    if args.json:
        from data_io import DataError, atomic_write_text

        if not args.json.parent.is_dir():
            raise SystemExit(f"error: output directory {args.json.parent} does not exist")
        try:
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        except (OSError, DataError) as err:
            raise SystemExit(f"error: cannot write {args.json}: {err}") from err
        print(f"\nwrote {args.json}")
    return 0 if all(r["equal_to_rouge_package"] for r in results["segmenters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and write ``bench/RESULTS.md`` (one command refreshes every figure).

    python -m bench.run_all [--out bench/RESULTS.md] [--only train rouge inference prune] [--threads N]
                            [--data_dir ../shared/data] [--merge]
    bash bench/run_all.sh [same flags]            # the same, with the project's virtualenv

Each benchmark is its own module in ``bench/`` (run in a subprocess, ``python -m bench.NAME ... --json``;
their progress is shown as it happens): ``bench_train`` (training throughput), ``bench_rouge`` (tw_rouge
pairs/s), ``bench_inference`` (seconds per article per backend), ``bench_prune`` (the full mt5-small shape
against vocabulary-pruned ones: training, memory, export size, beam-4 decoding). ``RESULTS.md`` gets the machine
(``harness.machine()``: CPU model, cores, RAM, torch threads, library versions), the date, the command, the
load average before and after, and each benchmark's tables (its own ``markdown_table``). A benchmark that
is absent or fails is reported as such in ``RESULTS.md``; the others still run. The raw JSON goes to
``--json_dir``. ``--merge`` with ``--only`` refreshes some benchmarks and keeps the others' sections.
Exit code: 0 when every benchmark ran, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import harness
from data_io import DataError, atomic_write_text

REPO = harness.REPO
BENCH = Path(__file__).resolve().parent
# name -> (module, title); run in this order
BENCHMARKS = {
    "train": ("bench.bench_train", "Training throughput"),
    "rouge": ("bench.bench_rouge", "tw_rouge throughput"),
    "inference": ("bench.bench_inference", "Inference: seconds per article per backend"),
    "prune": ("bench.bench_prune", "Vocabulary pruning: full mt5-small shape against pruned vocabularies"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="the Markdown report to write")
    parser.add_argument("--json_dir", type=Path, default=BENCH / "out",
                        help="where each benchmark's JSON goes (default bench/out, git-ignored)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="run only these benchmarks")
    parser.add_argument("--data_dir", type=Path, default=harness.DEFAULT_DATA_DIR,
                        help="the shared data folder (default: ../shared/data next to the repo)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the training and inference runs (default: their default, all cores)")
    parser.add_argument("--train_repeats", type=int, default=None, help="bench_train and bench_prune --repeats")
    parser.add_argument("--inference_articles", type=int, default=16, help="bench_inference --num_articles")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark")
    parser.add_argument("--merge", action="store_true",
                        help="update --out in place: replace (or add) the sections of the benchmarks run, each "
                             "with its own run's date, command, machine and load; keep the others")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads <= 0:
        parser.error("--threads must be positive")
    if args.inference_articles <= 0:
        parser.error("--inference_articles must be positive")
    return args


def script_flags(name: str, args: argparse.Namespace, json_path: Path) -> list[str]:
    """Command-line flags for one benchmark (``--data_dir`` and ``--json`` for all, the rest where it applies)."""
    flags = ["--data_dir", str(args.data_dir), "--json", str(json_path)]
    if name in ("train", "inference", "prune") and args.threads:
        flags += ["--threads", str(args.threads)]
    if name in ("train", "prune") and args.train_repeats:
        flags += ["--repeats", str(args.train_repeats)]
    if name == "inference":
        flags += ["--num_articles", str(args.inference_articles)]
    return flags


def relative(argument: str) -> str:
    """``argument`` relative to the repository when it is a path inside it (shorter commands in the report)."""
    try:
        return str(Path(argument).relative_to(REPO)) if Path(argument).is_absolute() else argument
    except ValueError:
        return argument


def module_exists(module: str) -> bool:
    """Whether ``module`` (``package.name``) can be found, without running it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its package is missing
        return False


def run_benchmark(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one benchmark module, echoing its output. Returns ``{"status", "seconds", "results", "stdout",
    "command", "error"}``; ``status`` is ``ok``, ``absent`` or ``failed``."""
    module = BENCHMARKS[name][0]
    json_path = args.json_dir / f"{name}.json"
    if not module_exists(module):
        source = module.replace(".", "/") + ".py"
        print(f"== {name}: {source} not found, skipped", flush=True)
        return {"status": "absent", "seconds": 0.0, "error": f"{source} is not in the repository"}
    json_path.unlink(missing_ok=True)  # never report a previous run's figures
    command = [sys.executable, "-m", module, *script_flags(name, args, json_path)]
    shown = " ".join(shlex.quote(relative(c)) for c in ["python", *command[1:]])
    print(f"== {name}: {shown}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    lines: list[str] = []
    # its own process group, so a timeout also stops the runs it started (bench_train's children)
    proc = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 0.0)):  # let it clean up first
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace or None)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    watchdog = threading.Timer(args.timeout, stop)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"   {line}", end="", flush=True)
            lines.append(line)
        code = proc.wait()
    except BaseException:  # Ctrl-C: the new session does not get the terminal's SIGINT, stop it here
        stop()
        raise
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        code = None
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {"seconds": seconds, "stdout": "".join(lines), "command": shown}
    results = None
    if json_path.is_file():
        try:
            results = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError as err:
            record["error"] = f"{json_path} is not valid JSON: {err}"
    if code is None:
        record.update(status="failed", error=f"timed out after {args.timeout:.0f} s")
    elif results is None:
        record.update(status="failed", error=record.get("error") or f"exited with {code} and wrote no {json_path.name}")
    else:
        # a script may exit non-zero to flag a missed check while still writing its figures
        record.update(status="ok", results=results, exit_code=code)
    print(f"== {name}: {record['status']} in {seconds:.0f} s", flush=True)
    return record


def load_markdown_table(name: str):
    """The benchmark module's ``markdown_table(results)`` function, or None."""
    try:
        module = importlib.import_module(BENCHMARKS[name][0])
    except Exception:  # a broken module must not stop the report
        return None
    return getattr(module, "markdown_table", None)


def tables_from_stdout(stdout: str) -> str:
    """Markdown table blocks (consecutive ``|`` lines) printed by a script, for scripts without a
    ``markdown_table`` function."""
    blocks, current = [], []
    for line in stdout.splitlines():
        if line.lstrip().startswith("|"):
            current.append(line.strip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return "\n\n".join(blocks)


def render_section(name: str, record: dict[str, Any]) -> str:
    title = BENCHMARKS[name][1]
    lines = [f"## {title}", ""]
    if record["status"] != "ok":
        lines.append(f"Not measured: {record['error']}.")
        if record["status"] == "failed" and record.get("stdout"):
            tail = "\n".join(record["stdout"].rstrip().splitlines()[-15:])
            lines += ["", "Last lines of its output:", "", "```", tail, "```"]
        return "\n".join(lines)
    lines += [f"`{record['command']}` ({record['seconds']:.0f} s)", ""]
    body = None
    table = load_markdown_table(name)
    if table is not None:
        try:
            body = table(record["results"])
        except Exception as err:  # a renderer bug must not lose the figures
            body = f"(its markdown_table failed: {type(err).__name__}: {err})"
    if not body:
        body = tables_from_stdout(record.get("stdout", "")) or (
            "```json\n" + json.dumps(record["results"], indent=2)[:6000] + "\n```")
    lines.append(body)
    if record.get("exit_code"):
        lines += ["", f"(the script exited with {record['exit_code']}: a check it makes did not pass)"]
    return "\n".join(lines)


def render(records: dict[str, dict], info: dict[str, Any], command: str, started: datetime, seconds: float,
           load_before: tuple, load_after: tuple, threads: int | None = None) -> str:
    """The whole ``RESULTS.md``."""
    v = info["versions"]
    memory = f", {info['memory_gib']:.0f} GiB RAM" if info["memory_gib"] else ""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/run_all.py`; do not edit by hand, re-run it.",
        "",
        f"- Machine: {info['cpu']}, {info['cpu_count']} logical CPUs{memory}, torch {v['torch']} "
        f"({info['torch_threads']} threads by default), transformers {v['transformers']}, accelerate "
        f"{v['accelerate']}, ctranslate2 {v['ctranslate2']}, Python {info['python']}, {info['os']}",
        f"- Threads used by the training and inference runs: {threads or 'their default (one per core)'}",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; all benchmarks took {seconds / 60:.1f} min",
        f"- Command: `{command}`",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (above {info['cpu_count']} means other jobs shared the "
        "CPUs and the timings are noisy)",
        "",
        "| benchmark | status | seconds |",
        "| --- | --- | ---: |",
    ]
    for name, record in records.items():
        lines.append(f"| {name} | {status_cell(record)} | {record['seconds']:.0f} |")
    for name, record in records.items():
        lines += ["", render_section(name, record)]
    return "\n".join(lines) + "\n"


def split_sections(markdown: str) -> tuple[list[str], dict[str, str]]:
    """``RESULTS.md`` as (its header lines, ``{"## title": section text}`` in file order)."""
    header: list[str] = []
    sections: dict[str, list[str]] = {}
    current = header
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = sections[line] = []
        current.append(line)
    return header, {title: "\n".join(lines).rstrip("\n") for title, lines in sections.items()}


def status_cell(record: dict[str, Any]) -> str:
    """A benchmark's status for the header table: ``ok``, or the status with its error."""
    return record["status"] if record["status"] == "ok" else f"{record['status']}: {record['error']}"


def merge(existing: str, records: dict[str, dict], info: dict[str, Any], command: str, started: datetime,
          load_before: tuple, load_after: tuple, threads: int | None = None) -> str:
    """``existing`` (a ``RESULTS.md``) with the sections of ``records`` replaced or appended; each merged
    section opens with a line naming its own run (date, command, machine, threads, load), and the header's
    status table gets a row per merged benchmark. The header's machine/date lines stay those of the run that
    wrote the file, and say so.

    Raises:
        ValueError: ``existing`` is not a ``RESULTS.md`` written by this script.
    """
    if not existing.startswith("# Benchmark results"):
        raise ValueError("not a RESULTS.md written by bench/run_all.py (no '# Benchmark results' heading)")
    header, sections = split_sections(existing)
    v = info["versions"]
    run_line = (f"*Merged from a separate run* (`--merge`): {started.strftime('%Y-%m-%d %H:%M UTC')}, "
                f"`{command}`; {info['cpu']}, {info['cpu_count']} logical CPUs, torch {v['torch']}, threads "
                f"{threads or 'default'}; load average before {', '.join(f'{x:.2f}' for x in load_before)}, "
                f"after {', '.join(f'{x:.2f}' for x in load_after)}.")
    for name, record in records.items():
        title_line = f"## {BENCHMARKS[name][1]}"
        body = render_section(name, record).split("\n", 1)[1].lstrip("\n")
        sections[title_line] = f"{title_line}\n\n{run_line}\n\n{body}"
        row = f"| {name} | {status_cell(record)} (merged, {started.strftime('%Y-%m-%d')}) | {record['seconds']:.0f} |"
        rows = [i for i, line in enumerate(header) if line.startswith(f"| {name} |")]
        if rows:
            header[rows[0]] = row
        else:
            last = max((i for i, line in enumerate(header) if line.startswith("|")), default=len(header) - 1)
            header.insert(last + 1, row)
    note = "Sections marked *merged* come from their own runs; the machine and date above are the first run's."
    if note not in header:
        at = next((i for i, line in enumerate(header) if line.startswith("Generated by")), 0)
        header.insert(at + 1, note)
    return "\n".join(header).rstrip("\n") + "\n\n" + "\n\n".join(sections.values()) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"error: the directory of --out {args.out} does not exist", file=sys.stderr)
        return 2
    args.json_dir.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else argv
    launcher = os.environ.get("RUN_ALL_LAUNCHER", "python -m bench.run_all")  # set by run_all.sh
    command = " ".join([launcher, *map(shlex.quote, given)])
    started, t0, load_before = datetime.now(timezone.utc), time.perf_counter(), os.getloadavg()
    info = harness.machine()
    records = {name: run_benchmark(name, args) for name in args.only}
    if args.merge and args.out.is_file():
        try:
            report = merge(args.out.read_text(encoding="utf-8"), records, info, command, started, load_before,
                           os.getloadavg(), threads=args.threads)
        except ValueError as err:
            print(f"error: --merge {args.out}: {err}", file=sys.stderr)
            return 2
    else:
        report = render(records, info, command, started, time.perf_counter() - t0, load_before, os.getloadavg(),
                        threads=args.threads)
    try:
        atomic_write_text(args.out, report)
    except (OSError, DataError) as err:
        print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    failed = [name for name, r in records.items() if r["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

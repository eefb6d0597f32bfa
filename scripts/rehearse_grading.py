"""Rehearse grading: in a fresh copy of the repository, run ``bash ./download.sh`` then
``bash ./run.sh INPUT OUTPUT`` as graders do (Hugging Face hub off, an empty HF cache, no MODEL_DIR/PRESET,
no outputs/ or models/), check the output and print each step's wall time and peak memory.

    bash scripts/rehearse_grading.sh INPUT.jsonl [MODEL_URL] [--run_sh FILE] [--work_dir DIR] [--keep]

Exit status 0 when everything a grader needs holds; 1 with a message naming what failed; 2 for a bad
argument. Peak memory is the resident set size of the largest process of each step (``os.wait4``'s rusage,
the per-child form of ``getrusage(RUSAGE_CHILDREN)``), and the GPU memory of run.sh's process when
``nvidia-smi`` is there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_io import DataError, read_jsonl  # noqa: E402
from handin import (  # noqa: E402
    DEFAULT_UNPACK_TO,
    MARKER_FILE,
    check_submission,
    copy_repository,
    human_bytes,
    read_lock,
    repository_files,
)

DOWNLOAD_LIMIT_BYTES = 4e9  # the course: under 4 GB, within an hour, 8 GB of GPU memory
DOWNLOAD_LIMIT_S = 3600
GPU_LIMIT_MIB = 8 * 1024
CLEARED_ENV = ("MODEL_DIR", "PRESET", "PYTHONPATH")  # what a grader's shell does not have


class RehearsalFailed(Exception):
    """What failed, in words a student can act on (exit status 1)."""


@dataclass
class StepResult:
    name: str
    returncode: int
    wall_s: float
    peak_rss_kb: int
    peak_gpu_mib: int | None


def gpu_memory_mib(pid: int) -> int | None:
    """GPU memory (MiB) ``nvidia-smi`` reports for process ``pid``; None without nvidia-smi or a reading."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return int(fields[1])
    return None


def run_step(name: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> StepResult:
    """Run ``cmd`` (its output goes to ours), wait for it with ``os.wait4`` (its own peak RSS, children
    included), sample its GPU memory each second when ``nvidia-smi`` exists; kill its process group after
    ``timeout_s``."""
    print(f"\n=== {name}: {' '.join(cmd)}   (in {cwd})", flush=True)
    sample_gpu = shutil.which("nvidia-smi") is not None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    peak_gpu: int | None = None
    last_sample = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if now - start > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise RehearsalFailed(f"{name} did not finish within {timeout_s:.0f} s (killed)")
        if sample_gpu and now - last_sample >= 1.0:
            last_sample = now
            used = gpu_memory_mib(proc.pid)
            if used is not None:
                peak_gpu = max(peak_gpu or 0, used)
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    return StepResult(name, proc.returncode, time.monotonic() - start, usage.ru_maxrss, peak_gpu)


def rehearse(args: argparse.Namespace) -> int:
    input_file = Path(args.input).resolve()
    try:
        n_articles = len(read_jsonl(input_file, text_column=None, require_summary=False))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.work_dir:
        work = Path(args.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="grading-rehearsal-"))
    repo, output = work / "repo", work / "output.jsonl"
    venv = os.environ.get("VENV") or str(ROOT / ".venv")
    copy_repository(repo, ROOT)
    if args.run_sh:
        shutil.copy(args.run_sh, repo / "run.sh")
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(work / "hf-home"), VENV=venv)
    (work / "hf-home").mkdir(exist_ok=True)
    if args.model_url:
        env["MODEL_URL"] = args.model_url
    print(f"rehearsal in {work}: {len(repository_files(ROOT))} files copied from {ROOT} (tracked and untracked, "
          f"not ignored; no .venv, outputs, models); venv {venv} reused (packages are not reinstalled); "
          f"HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1, empty HF_HOME; MODEL_DIR and PRESET unset", flush=True)
    results: list[StepResult] = []
    notes: dict[str, str] = {}
    try:
        download = run_step("download.sh", ["bash", "./download.sh"], repo, env, args.timeout)
        results.append(download)
        if download.returncode != 0:
            raise RehearsalFailed(f"download.sh exited with status {download.returncode} (its message is above)")
        unpack_to = read_lock(repo / "model.lock").get("unpack_to") or DEFAULT_UNPACK_TO
        marker = read_lock(repo / unpack_to / MARKER_FILE)  # the same key=value format
        if not marker.get("size", "").isdigit():
            raise RehearsalFailed(f"download.sh succeeded but left no {unpack_to}/{MARKER_FILE}: run.sh would not find "
                                  "the model where download.sh is meant to put it")
        size = int(marker["size"])
        unpacked = sum(p.stat().st_size for p in (repo / unpack_to).iterdir() if p.is_file())
        notes["download.sh"] = (f"{human_bytes(size)} downloaded (limit {human_bytes(DOWNLOAD_LIMIT_BYTES)}), "
                                f"{human_bytes(unpacked)} unpacked in {unpack_to}")
        if size > DOWNLOAD_LIMIT_BYTES:
            raise RehearsalFailed(f"the archive is {human_bytes(size)}, over the {human_bytes(DOWNLOAD_LIMIT_BYTES)} "
                                  "download limit (package_model.py --dtype bf16 halves it)")
        if download.wall_s > DOWNLOAD_LIMIT_S:
            raise RehearsalFailed(f"download.sh took {download.wall_s:.0f} s, over the one-hour limit")

        run = run_step("run.sh", ["bash", "./run.sh", str(input_file), str(output)], repo, env, args.timeout)
        results.append(run)
        if run.returncode != 0:
            raise RehearsalFailed(f"run.sh exited with status {run.returncode} (its message is above)")
        problems = check_submission(input_file, output)
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            raise RehearsalFailed(f"run.sh's output is not what graders need:\n{listed}")
        notes["run.sh"] = f"{n_articles} titles for {n_articles} articles, ids in input order"
        if run.peak_gpu_mib is not None and run.peak_gpu_mib > GPU_LIMIT_MIB:
            raise RehearsalFailed(f"run.sh used {run.peak_gpu_mib} MiB of GPU memory, over the {GPU_LIMIT_MIB} MiB "
                                  "limit (a smaller --per_device_batch_size in title_config.json, or bf16)")
    except RehearsalFailed as failure:
        print_summary(results, notes)
        print(f"\nrehearsal FAILED: {failure}\n(the copy is kept in {work} for a look)", file=sys.stderr)
        return 1
    print_summary(results, notes)
    print(f"\nrehearsal passed: download.sh and run.sh work in a fresh copy, offline; output checked ({output})")
    if not args.work_dir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_summary(results: list[StepResult], notes: dict[str, str]) -> None:
    print("\n| step | exit | wall time | peak memory (RSS) | peak GPU memory | notes |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        gpu = f"{r.peak_gpu_mib} MiB" if r.peak_gpu_mib is not None else "-"
        print(f"| {r.name} | {r.returncode} | {r.wall_s:.1f} s | {r.peak_rss_kb / 1024:.0f} MiB | {gpu} | "
              f"{notes.get(r.name, '')} |")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bash scripts/rehearse_grading.sh", description=__doc__.split("\n\n")[0],
        epilog="The copy uses the caller's virtual environment ($VENV, else this repository's .venv): no package is "
               "reinstalled, so a grader's first-time install (scripts/ensure_venv.sh on a clean machine) is not "
               "part of the rehearsal. MODEL_SHA256 in the environment reaches download.sh.")
    parser.add_argument("input", help="JSON lines with id and maintext, as graders' input (titles are ignored).")
    parser.add_argument("model_url", nargs="?", help="Download from here instead of model.lock's url (MODEL_URL).")
    parser.add_argument("--run_sh", help="Use this file as run.sh in the copy (to rehearse a changed script).")
    parser.add_argument("--work_dir", help="Make the copy here (kept). Default: a new temporary directory, removed "
                                           "after a pass and kept after a failure.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary copy after a pass too.")
    parser.add_argument("--timeout", type=float, default=2 * DOWNLOAD_LIMIT_S, help="Seconds allowed per step.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return rehearse(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

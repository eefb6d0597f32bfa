"""What every benchmark in ``bench/`` shares: the command-line basics, the child-process runner, the machine
description, peak memory, the ``--json`` writer and a cached random mT5 export.

A benchmark script is then mostly its measurement::

    from bench import harness

    def measure(spec: dict) -> dict:                  # runs in a fresh interpreter
        threads = harness.setup_torch(spec["threads"])  # flush denormals, set the thread count
        ...                                            # load spec["export"], time something
        return {"seconds": ..., "torch_threads": threads}  # the runner adds peak_rss_mb

    def main(argv=None):
        parser = argparse.ArgumentParser(description=__doc__)
        harness.add_common_arguments(parser, data_help="folder with lcsts_train.jsonl", child_timeout=600)
        args = parser.parse_args(argv)
        harness.check_common_arguments(parser, args)
        texts = [r["maintext"] for r in harness.read_data(args.data_dir, "lcsts_train.jsonl")]
        with harness.scratch_dir(args.work_dir, "bench_x_") as work_dir:
            export = harness.random_mt5_export(work_dir, texts, MT5_SMALL_CONFIG, vocab_size=16000, seed=0)
            raw = harness.run_child("bench.bench_x:measure", {"export": str(export.dir), "threads": args.threads},
                                    work_dir, "run-1", timeout=args.child_timeout)
        results = {"benchmark": "x", "runs": [raw], "machine": harness.machine()}
        if args.json:
            harness.write_json(args.json, results)

Nothing here imports torch or transformers at module level (``--help`` stays instant); the functions
that need them import them when called.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from data_io import DataError, atomic_write_text, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
LIBRARIES = ("torch", "transformers", "accelerate", "ctranslate2", "sentencepiece", "rouge", "jieba")
BUILD_INFO = "bench_build.json"  # the recipe a cached tokenizer or export was built from
LOG_TAIL_LINES = 25
# quiet, offline children: no tokenizer thread pools fighting the measured run, no progress noise, no hub
QUIET_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}


class ChildError(RuntimeError):
    """A measured child process failed or timed out; the message ends with the tail of its log."""


# ----------------------------------------------------------------------------------------------------
# command line and files


def add_common_arguments(parser: argparse.ArgumentParser, *, data_help: str, work_dir: bool = True,
                         threads: bool = True, threads_default: int | None = None,
                         child_timeout: float | None = None) -> None:
    """Add the flags every benchmark spells the same way: ``--data_dir``, ``--json`` and, when asked for,
    ``--work_dir``, ``--threads`` (default ``threads_default``; None: torch's default, one per core) and
    ``--child_timeout`` (default ``child_timeout`` seconds)."""
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"{data_help} (default: ../shared/data next to the repository)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures to this JSON file (its directory must exist)")
    if work_dir:
        parser.add_argument("--work_dir", type=Path, default=None,
                            help="keep the built exports, data and run logs here; an export is reused when its "
                                 "recipe matches (default: a temporary directory, removed at the end)")
    if threads:
        parser.add_argument("--threads", type=int, default=threads_default,
                            help="torch/OpenMP threads in every measured run (default: "
                                 f"{threads_default or 'torch default, one per core'})")
    if child_timeout is not None:
        parser.add_argument("--child_timeout", type=float, default=child_timeout,
                            help=f"seconds before a measured run is killed (default {child_timeout:g})")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit 2) for a non-positive ``--threads`` / ``--child_timeout`` or a ``--json``
    whose directory does not exist (checked before anything is measured)."""
    for name in ("threads", "child_timeout"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: directory {args.json.parent} does not exist")


def read_data(data_dir: Path, name: str) -> list[dict]:
    """The records of ``data_dir/name`` (``data_io.read_jsonl``).

    Raises:
        SystemExit: the file is missing or malformed (the message names the file and the line).
    """
    path = Path(data_dir) / name
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass --data_dir pointing at the shared data folder")
    try:
        return read_jsonl(path)
    except DataError as err:
        raise SystemExit(f"error: {err}") from err


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (``data_io.atomic_write_text``).

    Raises:
        SystemExit: the file cannot be written.
    """
    try:
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except (OSError, DataError) as err:
        raise SystemExit(f"error: cannot write {path}: {err}") from err


@contextlib.contextmanager
def scratch_dir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created; kept afterwards) or, when None, a temporary directory removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (run_all's timeout) into ``SystemExit``: the running child is killed by
    ``subprocess.run`` and temporary directories are removed on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def rotation(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` rotated left by ``round_index``: round 0 ``a, b, c``, round 1 ``b, c, a``, round 2
    ``c, a, b``. On a shared machine the run right after another one was seen to be systematically faster
    or slower (memory reclaim, other jobs), so interleaved rounds give no contender a fixed slot."""
    shift = round_index % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


# ----------------------------------------------------------------------------------------------------
# measured child processes


def thread_env(threads: int | None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for a child (empty when ``threads`` is None)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def run_child(target: str, spec: dict[str, Any], work_dir: Path, name: str, *, timeout: float | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``target`` (``"package.module:function"``) on ``spec`` in a fresh interpreter and return its result.

    The function is called as ``function(spec) -> dict`` in the child (see :func:`child_main`), which adds
    ``peak_rss_mb`` (that process's peak RSS) to the result. Files in ``work_dir``: ``NAME.spec.json``,
    ``NAME.result.json`` and ``NAME.log`` (the child's stdout and stderr). The child runs with the
    repository on ``PYTHONPATH``, ``env`` added to this process's environment, and ``work_dir`` as its
    working directory.

    Raises:
        ChildError: the child exited non-zero, wrote no result, or ran past ``timeout`` seconds (it is
            killed then); the message names the log and ends with its last lines.
    """
    work_dir = Path(work_dir)
    spec_path, result_path, log_path = (work_dir / f"{name}{suffix}" for suffix in (".spec.json", ".result.json",
                                                                                    ".log"))
    result_path.unlink(missing_ok=True)  # a kept --work_dir: never read a previous run's result
    atomic_write_text(spec_path, json.dumps(spec, ensure_ascii=False))
    child_env = {**os.environ, **(env or {}),
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", "import sys; from bench.harness import child_main; sys.exit(child_main())",
               target, str(spec_path), str(result_path)]
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=str(work_dir),
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0 or not result_path.is_file():
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)
        what = (f"timed out after {timeout:.0f} s" if code is None else
                f"exited with {code}" if code else "exited with 0 but wrote no result")
        raise ChildError(f"{name} {what}; last lines of {log_path}:\n{''.join(lines[-LOG_TAIL_LINES:])}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def child_main(argv: Sequence[str] | None = None) -> int:
    """The child side of :func:`run_child`: ``TARGET SPEC_JSON RESULT_JSON``. Imports the target, calls it
    on the spec and writes its result (plus ``peak_rss_mb``) atomically."""
    target, spec_path, result_path = sys.argv[1:] if argv is None else argv
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    write_json(result_path, {**result, "peak_rss_mb": peak_rss_mb()})
    return 0


def setup_torch(threads: int | None) -> int:
    """Prepare torch in a measured child: flush subnormal floats to zero (random ``lm_head`` weights
    otherwise make backward 20x slower) and use ``threads`` intra-op threads (None: torch's default).
    Returns the thread count in effect."""
    import torch

    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def peak_rss_mb(status: str | os.PathLike = "/proc/self/status") -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` of ``status`` on Linux, else ``ru_maxrss``
    (KiB on Linux, bytes on macOS).

    ``VmHWM`` belongs to the process's own address space, which ``exec`` makes new; ``ru_maxrss`` does not
    start afresh (Linux carries the parent's peak into a child started with ``vfork`` + ``exec``, as
    ``subprocess`` does), so a measured child of a large parent would report the parent's peak."""
    try:
        for line in Path(status).read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ----------------------------------------------------------------------------------------------------
# the machine


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's ``model name`` from ``cpuinfo``, else what ``platform`` knows."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Physical memory in GiB (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """What the figures depend on: ``cpu`` (model), ``cpu_count``, ``memory_gib``, ``torch_threads`` (this
    process's default), ``python``, ``os``, ``versions`` (of :data:`LIBRARIES`, None when not installed)
    and ``load_average`` (1, 5, 15 min: other jobs on the machine skew timings)."""
    import torch

    versions = {}
    for package in LIBRARIES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": memory_gib(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "os": platform.platform(),
            "versions": versions, "load_average": list(os.getloadavg())}


# ----------------------------------------------------------------------------------------------------
# random mT5 exports


@dataclass(frozen=True)
class RandomExport:
    """A ``save_pretrained`` export (random mT5 + sentencepiece tokenizer) built by :func:`random_mt5_export`."""

    dir: Path
    parameters: int
    config: dict[str, Any]  # the MT5Config fields it was built from (vocab_size resolved)
    tokenizer_size: int  # tokens of its tokenizer (the model may have more embedding rows)
    reused: bool  # found in the work dir with the same recipe
    build_s: float | None = None  # seconds to build it, tokenizer included (None when reused)

    def to_json(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "parameters": self.parameters, "config": self.config,
                "tokenizer_size": self.tokenizer_size}


def _read_build_info(directory: Path) -> dict | None:
    try:
        return json.loads((directory / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def random_mt5_export(work_dir: Path, texts: Iterable[str], config: dict[str, Any], vocab_size: int, seed: int,
                      name: str = "export", *, timeout: float | None = None) -> RandomExport:
    """A random ``MT5ForConditionalGeneration`` with a sentencepiece tokenizer, saved with ``save_pretrained``
    to ``work_dir/name`` and loaded by every measured run (identical weights, init time excluded).

    The tokenizer (``vocab_size`` unigram pieces, ``modeling.train_sentencepiece_tokenizer``) is trained on
    ``texts`` and cached in ``work_dir/tokenizer``; the model is ``modeling.build_model_from_config(config)``
    after ``torch.manual_seed(seed)``, its ``vocab_size`` raised to the tokenizer's length (rounded up to a
    multiple of 8) when the config gives none or a smaller one. Pass ``modeling.MT5_SMALL_CONFIG`` for the
    published mt5-small shape (untied ``lm_head``, 300M parameters). Each piece is reused when it was built
    from the same recipe (texts, ``vocab_size``, ``config``, ``seed``; recorded in ``bench_build.json``), else
    rebuilt; the export is built in a temporary sibling and swapped in whole (stale conversions inside it,
    such as ``ct2-int8/``, go with the old one).

    The build runs in a child process (:func:`run_child`, log ``work_dir/build-NAME.log``), so the parent
    stays small and the memory the build used is returned before any measured run.

    Raises:
        ChildError: the build failed (for example sentencepiece cannot train ``vocab_size`` pieces on
            ``texts``, or the built model ties an ``lm_head`` the config asks to be untied).
    """
    import hashlib

    texts = list(texts)
    work_dir = Path(work_dir)
    out = work_dir / name
    tokenizer_recipe = {"texts_sha1": hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest(),
                        "vocab_size": vocab_size}
    recipe = json.loads(json.dumps({**tokenizer_recipe, "seed": seed, "config": config}))  # as read back
    info = _read_build_info(out)
    if info is not None and info.get("recipe") == recipe and (out / "config.json").is_file():
        built = info["export"]
        print(f"  {name}: {built['parameters'] / 1e6:.1f}M parameters, reused from {out}", flush=True)
        return RandomExport(dir=out, parameters=built["parameters"], config=built["config"],
                            tokenizer_size=built["tokenizer_size"], reused=True)
    started = time.perf_counter()
    spec = {"out": str(out), "tokenizer_dir": str(work_dir / "tokenizer"), "texts": texts, "config": config,
            "seed": seed, "tokenizer_recipe": tokenizer_recipe, "recipe": recipe}
    result = run_child("bench.harness:build_random_export", spec, work_dir, f"build-{name}", timeout=timeout,
                       env=QUIET_ENV)
    tokenizer = result["tokenizer"]
    print(f"  tokenizer: {tokenizer['size']:,} tokens, " + (
        f"reused from {work_dir / 'tokenizer'}" if tokenizer["reused"] else
        f"trained on {len(texts):,} texts in {tokenizer['seconds']:.0f} s"), flush=True)
    print(f"  {name}: {result['export']['parameters'] / 1e6:.1f}M parameters, built and saved in "
          f"{result['model_s']:.0f} s", flush=True)
    return RandomExport(dir=out, parameters=result["export"]["parameters"], config=result["export"]["config"],
                        tokenizer_size=result["export"]["tokenizer_size"], reused=False,
                        build_s=time.perf_counter() - started)


def build_random_export(spec: dict[str, Any]) -> dict[str, Any]:
    """Child entry of :func:`random_mt5_export`: train (or reuse) the tokenizer, build and save the model.
    Returns ``{"export": RandomExport.to_json(), "tokenizer": {"size", "reused", "seconds"}, "model_s"}``."""
    import torch

    import modeling
    from export import swap_dir

    tokenizer_dir, out = Path(spec["tokenizer_dir"]), Path(spec["out"])
    started = time.perf_counter()
    info = _read_build_info(tokenizer_dir)
    reused = info is not None and info.get("recipe") == spec["tokenizer_recipe"]
    if reused:
        tokenizer = modeling.get_tokenizer(str(tokenizer_dir))
    else:
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        tokenizer = modeling.train_sentencepiece_tokenizer(spec["texts"], tokenizer_dir,
                                                           vocab_size=spec["tokenizer_recipe"]["vocab_size"])
        atomic_write_text(tokenizer_dir / BUILD_INFO, json.dumps({"recipe": spec["tokenizer_recipe"]}))
    tokenizer_s = time.perf_counter() - started

    started = time.perf_counter()
    fields = dict(spec["config"])
    if fields.get("vocab_size", 0) < modeling.round_up(len(tokenizer)):
        fields["vocab_size"] = modeling.round_up(len(tokenizer))
    torch.manual_seed(spec["seed"])
    model = modeling.build_model_from_config(fields)
    if fields.get("tie_word_embeddings", True) is False and modeling.lm_head_is_tied(model):
        raise RuntimeError(f"{out}: the built model ties lm_head to the embeddings, the config asks for untied")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    export = {"dir": str(out), "parameters": modeling.count_parameters(model)[0], "config": fields,
              "tokenizer_size": len(tokenizer)}
    atomic_write_text(tmp / BUILD_INFO, json.dumps({"recipe": spec["recipe"], "export": export}))
    swap_dir(tmp, out)
    if hasattr(os, "sync"):  # flush the saved weights now, not during the first timed run
        os.sync()
    return {"export": export, "tokenizer": {"size": len(tokenizer), "reused": reused, "seconds": tokenizer_s},
            "model_s": time.perf_counter() - started}

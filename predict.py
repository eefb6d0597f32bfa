"""Write one title per article with a fine-tuned mT5 export (the course's prediction contract).

    python predict.py --model_dir outputs/mt5-small/best --input_file public.jsonl --output_file submission.jsonl
    python predict.py ... --preset beam4 --no_repeat_ngram_size 3     # any GenerationConfig field from the CLI
    python predict.py ... --backend ct2                               # CTranslate2 (int8 on CPU), converted once
    python predict.py --model_dir M --sweep greedy beam4 beam5 --reference val.jsonl --output_dir sweep/

Input: JSON lines with ``id`` and the article (``maintext``; may be empty); ``title`` is optional.
Output: one ``{"title": ..., "id": ...}`` line per input line, in input order, written atomically.
The export's ``title_config.json`` (``export.TitleConfig``: source length and prefix, text column, batch
size) gives the defaults, and its ``generation_config.json`` the decoding strategy (the one training
selected or evaluated with); ``--preset`` names another, and flags override single fields.

Sweep mode runs each preset on a labelled file, scores it with tw_rouge and writes ``sweep.md``,
``sweep.csv``, ``sweep.png`` and ``PRESET.jsonl`` (the predictions) to ``--output_dir``.

Exit status: 0 on success; 2 for a bad argument, input file, output path or model directory (checked
before anything is generated); 1 when generation or writing fails. On any error no output file is
created and an existing one is left as it was.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

import ct2_backend
from data_io import DataError, atomic_write_text, check_output_path, read_jsonl, write_jsonl_atomic
from export import TITLE_CONFIG_FILE, ExportError, TitleConfig, check_export, load_model
from generation import generate_titles, load_presets, resolve_generation_config
from modeling import get_tokenizer
from plotting import save_figure_atomic
from tw_rouge import get_rouge, get_segmenter

logger = logging.getLogger("predict")
# CLI flags that override GenerationConfig fields (None = keep the preset's / model's value)
GENERATION_FIELDS = ("num_beams", "do_sample", "top_k", "top_p", "temperature", "length_penalty",
                     "no_repeat_ngram_size", "repetition_penalty", "max_new_tokens")


@dataclass
class PredictArguments:
    model_dir: Optional[str] = field(
        default=None, metadata={"help": "A save_pretrained export: config.json, weights, tokenizer, "
                                        "generation_config.json (and title_config.json written by training)."})
    input_file: Optional[str] = field(default=None, metadata={"help": "JSON lines with 'id' and the article text."})
    output_file: Optional[str] = field(
        default=None, metadata={"help": "Where to write {'title', 'id'} JSON lines (parent dirs are created)."})
    preset: Optional[str] = field(
        default=None, metadata={"help": "Decoding preset name (default: the export's own strategy, its "
                                        "generation_config.json; beam5 for an export without title_config.json)."})
    presets_file: Optional[str] = field(
        default=None, metadata={"help": "JSON file of presets (default: configs/generation_presets.json)."})
    num_beams: Optional[int] = field(default=None, metadata={"help": "Override: beams (1 = greedy or sampling)."})
    do_sample: Optional[bool] = field(default=None,
                                      metadata={"help": "Override: sample instead of search (true/false)."})
    top_k: Optional[int] = field(default=None,
                                 metadata={"help": "Override: sample from the k most likely tokens (0 = all)."})
    top_p: Optional[float] = field(default=None, metadata={"help": "Override: nucleus sampling probability mass."})
    temperature: Optional[float] = field(default=None, metadata={"help": "Override: sampling temperature."})
    length_penalty: Optional[float] = field(
        default=None, metadata={"help": "Override: beam score = log-prob / length**length_penalty."})
    no_repeat_ngram_size: Optional[int] = field(
        default=None, metadata={"help": "Override: forbid repeating n-grams of this size (0 = off)."})
    repetition_penalty: Optional[float] = field(
        default=None, metadata={"help": "Override: penalty on already generated tokens (1.0 = off)."})
    max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Override: title length limit in tokens (default: the model's generation "
                                        "config, else the training max_target_length, else 64)."})
    seed: Optional[int] = field(default=None, metadata={"help": "Random seed for the sampling presets."})
    per_device_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Articles per generate call (default: training's per_device_eval_batch_size, "
                                        "else 32)."})
    max_source_length: Optional[int] = field(
        default=None, metadata={"help": "Truncate articles to this many tokens (default: as trained, else 512)."})
    source_prefix: Optional[str] = field(
        default=None, metadata={"help": "Text put before every article (default: as trained, else empty)."})
    text_column: Optional[str] = field(
        default=None, metadata={"help": "Field holding the article (default: as trained, else maintext)."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Only the first N articles (quick runs)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available, else CPU), cpu, cuda or cuda:N."})
    bf16: Optional[bool] = field(
        default=None, metadata={"help": "bfloat16 autocast for the hf backend (default: on for CUDA with bf16 "
                                        "support)."})
    backend: str = field(
        default="hf", metadata={"help": "hf: transformers generate; ct2: CTranslate2 (faster on CPU).",
                                "choices": ["hf", "ct2"]})
    ct2_compute_type: Optional[str] = field(
        default=None, metadata={"help": "CTranslate2 weight/compute type: int8 (CPU default), int8_bfloat16 / "
                                        "int8_float16 (CUDA default), float32 (exact, for tests)..."})
    ct2_dir: Optional[str] = field(
        default=None, metadata={"help": "Where to cache the converted model (default: MODEL_DIR/ct2-<compute type>)."})
    sweep: Optional[list[str]] = field(
        default=None, metadata={"help": "Sweep mode: run these presets on --reference and score them."})
    reference: Optional[str] = field(
        default=None, metadata={"help": "Sweep mode: labelled JSON lines (article + title + id)."})
    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Sweep mode: directory for sweep.md/.csv/.png and PRESET.jsonl."})
    segmenter: Optional[str] = field(
        default=None, metadata={"help": "Sweep mode: tw_rouge segmenter ckip/jieba/char "
                                        "(default: $TW_ROUGE_SEGMENTER, else ckip)."})
    log_level: str = field(default="info", metadata={"help": "Logging level: debug, info, warning, error."})


class UsageError(Exception):
    """A problem with the arguments, the input or the model directory (exit status 2)."""


# ----------------------------------------------------------------------------------------------- checks

def check_model_dir(model_dir: str | None) -> Path:
    """:func:`export.check_export` with its errors as :class:`UsageError`."""
    try:
        return check_export(model_dir)
    except ExportError as err:
        raise UsageError(str(err)) from err


def read_title_config(model_dir: Path) -> TitleConfig:
    """The export's :class:`export.TitleConfig` (its defaults when the export has none).

    Raises:
        UsageError: a malformed ``title_config.json`` (the message names the file).
    """
    try:
        return TitleConfig.load(model_dir)
    except ExportError as err:
        raise UsageError(str(err)) from err


def check_backend(args: PredictArguments, model_dir: Path, title_config: TitleConfig) -> None:
    """A prompt-tuned export decodes with ``--backend hf`` only.

    Raises:
        UsageError: ``--backend ct2`` with a prompt-tuned export, naming the reason and the alternative.
    """
    if args.backend == "ct2" and title_config.prompt_adapter:
        raise UsageError(f"{model_dir} is a prompt-tuned export (a peft soft prompt in "
                         f"{title_config.prompt_adapter}/): CTranslate2 cannot represent a soft prompt (it feeds "
                         "token ids to the encoder, not the learned prompt embeddings), so --backend ct2 would "
                         "decode without it; use --backend hf")


def resolve_settings(args: PredictArguments, title_config: TitleConfig) -> dict[str, Any]:
    """Source-side settings: the flag when given, else what training recorded (else the contract's default).

    Raises:
        UsageError: a non-positive length, batch size or sample count.
    """
    for flag in ("max_source_length", "per_device_batch_size", "max_samples"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag} must be positive, got {value}")
    pick = lambda value, recorded: recorded if value is None else value  # noqa: E731 - 0 is a value, not "unset"
    return dict(
        max_source_length=pick(args.max_source_length, title_config.max_source_length),
        source_prefix=pick(args.source_prefix, title_config.source_prefix),
        text_column=pick(args.text_column, title_config.text_column),
        batch_size=pick(args.per_device_batch_size, title_config.per_device_eval_batch_size),
        max_target_length=title_config.max_target_length,
    )


# range checks transformers' GenerationConfig.validate does not make (it accepts num_beams=0, top_p=1.5...)
_OVERRIDE_RANGES = {
    "num_beams": (lambda v: v >= 1, ">= 1"), "top_k": (lambda v: v >= 0, ">= 0 (0 = no top-k)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"), "temperature": (lambda v: v > 0, "> 0"),
    "no_repeat_ngram_size": (lambda v: v >= 0, ">= 0"), "repetition_penalty": (lambda v: v > 0, "> 0"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
}


def generation_overrides(args: PredictArguments) -> dict[str, Any]:
    """The GenerationConfig fields given on the command line.

    Raises:
        UsageError: a value out of range (e.g. ``--top_p 1.5``).
    """
    overrides = {name: getattr(args, name) for name in GENERATION_FIELDS if getattr(args, name) is not None}
    for name, value in overrides.items():
        check, allowed = _OVERRIDE_RANGES.get(name, (lambda v: True, ""))
        if not check(value):
            raise UsageError(f"--{name} must be {allowed}, got {value}")
    return overrides


def load_base_generation_config(model_dir: Path, max_target_length: int):
    """The export's ``generation_config.json`` (else one derived from ``config.json``); when it sets no
    length limit, ``max_new_tokens`` = the training ``max_target_length``."""
    from transformers import AutoConfig, GenerationConfig

    try:
        if (model_dir / "generation_config.json").exists():
            config = GenerationConfig.from_pretrained(str(model_dir))
        else:
            config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir)))
    except Exception as err:  # transformers raises OSError/ValueError/TypeError for bad files
        raise UsageError(f"{model_dir}: cannot read the generation config: {err}") from err
    if config.max_new_tokens is None:
        config.max_new_tokens = max_target_length
    return config


def resolve_generation(base, preset: str | None, overrides: dict[str, Any], presets: dict[str, dict]):
    """``generation.resolve_generation_config`` with its errors turned into :class:`UsageError`."""
    try:
        return resolve_generation_config(base, preset, overrides, presets=presets)
    except KeyError as err:
        raise UsageError(err.args[0]) from err
    except ValueError as err:
        raise UsageError(str(err)) from err


def choose_generation(args: PredictArguments, model_dir: Path, title_config: TitleConfig,
                      presets: dict[str, dict]) -> tuple[str, Any]:
    """``(preset name, GenerationConfig)`` for prediction, logged with the reason:

    - ``--preset`` (``PRESET`` in run.sh): that preset, over the export's special-token ids;
    - else an export with ``title_config.json``: its own ``generation_config.json`` as it is (the strategy
      training selected on validation, or its evaluation preset), named by ``generation_preset``;
    - else (a plain ``save_pretrained`` model): :class:`export.TitleConfig`'s default preset.

    CLI fields (``--num_beams``...) override single fields in every case.
    """
    base = load_base_generation_config(model_dir, title_config.max_target_length)
    overrides = generation_overrides(args)
    name, reason = title_config.generation_preset, title_config.generation_preset_reason
    if args.preset:
        name, reason, preset = args.preset, "named by --preset / PRESET", args.preset
    elif (model_dir / TITLE_CONFIG_FILE).exists():
        reason, preset = f"the export's own: {reason}", None  # generation_config.json as it is
    else:
        preset = name
    config = resolve_generation(base, preset, overrides, presets)
    logger.info("preset %s (%s)%s: %s", name, reason, " with overrides" if overrides else "",
                describe_generation(config))
    return name, config


def describe_generation(config) -> dict[str, Any]:
    """The decoding fields worth logging."""
    names = ("num_beams", "do_sample", "top_k", "top_p", "temperature", "length_penalty", "early_stopping",
             "no_repeat_ngram_size", "repetition_penalty", "max_new_tokens", "min_new_tokens")
    return {n: getattr(config, n) for n in names if getattr(config, n, None) is not None}


# ----------------------------------------------------------------------------------------------- engines

def select_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu`` (then torch uses every core, unless
    ``OMP_NUM_THREADS`` is set).

    Raises:
        UsageError: CUDA asked for but not available, or an unknown device name.
    """

    requested = (requested or "auto").lower()
    if requested == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif requested == "cpu" or requested.startswith("cuda"):
        device = requested
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {requested}: CUDA is not available on this machine")
    else:
        raise UsageError(f"--device {requested}: use auto, cpu, cuda or cuda:N")
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):  # an explicit OMP_NUM_THREADS wins
        torch.set_num_threads(os.cpu_count() or 1)
    return device


class TitleEngine:
    """Loads the export once for the chosen backend and generates titles for lists of articles."""

    def __init__(self, args: PredictArguments, model_dir: Path, settings: dict[str, Any]):
        self.args, self.model_dir, self.settings = args, model_dir, settings
        self.device = select_device(args.device)
        try:
            self.tokenizer = get_tokenizer(str(model_dir))
        except Exception as err:  # noqa: BLE001 - transformers/sentencepiece raise many types
            raise UsageError(f"{model_dir}: cannot load the tokenizer: {err}") from err
        if args.backend == "ct2":
            self._load_ct2()
        else:
            self._load_hf()

    def _load_hf(self) -> None:
        try:
            self.model = load_model(self.model_dir)  # a prompt-tuned export: peft's model with its soft prompt
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"{self.model_dir}: cannot load the model: {err}") from err
        self.model.to(self.device).eval()
        bf16 = self.args.bf16
        if bf16 is None:
            bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
        self.bf16 = bool(bf16)
        stored = self.model.dtype
        # from_pretrained keeps the stored dtype (a bf16 archive from package_model.py loads as bf16). Compute in
        # float32 unless bf16 autocast runs on CUDA anyway: CPU bf16 kernels are slow, and T5 overflows in fp16.
        if stored != torch.float32 and not (self.bf16 and self.device.startswith("cuda") and stored == torch.bfloat16):
            self.model.float()
            logger.info("weights stored as %s, computing in float32", stored)
        logger.info("backend hf on %s%s, %d threads", self.device, " (bf16)" if self.bf16 else "",
                    torch.get_num_threads())

    def _load_ct2(self) -> None:
        import ctranslate2

        device = self.device
        if device.startswith("cuda") and ctranslate2.get_cuda_device_count() == 0:
            logger.warning("CTranslate2 has no CUDA support here; using the CPU")
            device = "cpu"
        compute_type = self.args.ct2_compute_type or ct2_backend.default_compute_type(device)
        target = self.args.ct2_dir or ct2_backend.default_ct2_dir(self.model_dir, compute_type)
        if not self.args.ct2_dir and not os.access(self.model_dir, os.W_OK):
            raise UsageError(f"{self.model_dir}: not writable, cannot cache the CTranslate2 model there; "
                             "give --ct2_dir")
        try:
            ct2_dir = ct2_backend.convert_export(self.model_dir, compute_type, output_dir=target)
            self.ct2 = ct2_backend.CT2TitleGenerator(ct2_dir, self.tokenizer, device=device,
                                                      compute_type=compute_type)
        except Exception as err:  # noqa: BLE001 - converter and runtime raise many types
            raise UsageError(f"{self.model_dir}: cannot convert/load the model with CTranslate2: {err}") from err
        logger.info("backend ct2 (%s) on %s", compute_type, device)

    def generate(self, texts: Sequence[str], generation_config) -> list[str]:
        """``[n]`` titles in input order (batches sorted by length inside)."""
        kwargs = dict(batch_size=self.settings["batch_size"], max_source_length=self.settings["max_source_length"],
                      source_prefix=self.settings["source_prefix"], progress=True)
        if self.args.backend == "ct2":
            return self.ct2.generate_titles(texts, generation_config, seed=self.args.seed, **kwargs)
        from transformers import set_seed

        if self.args.seed is not None:
            set_seed(self.args.seed)
        return generate_titles(self.model, self.tokenizer, texts, generation_config, device=self.device,
                               bf16=self.bf16, **kwargs)


# ----------------------------------------------------------------------------------------------- modes

def predict(args: PredictArguments) -> int:
    """Read ``--input_file``, generate, write ``--output_file``."""
    if not args.input_file or not args.output_file:
        raise UsageError("give --input_file and --output_file (or --sweep with --reference and --output_dir)")
    check_output_path(args.output_file, [args.input_file])
    model_dir = check_model_dir(args.model_dir)
    title_config = read_title_config(model_dir)
    check_backend(args, model_dir, title_config)
    settings = resolve_settings(args, title_config)
    records = read_jsonl(args.input_file, text_column=settings["text_column"], require_summary=False,
                         allow_empty_text=True)
    if args.max_samples:
        records = records[: args.max_samples]
    _, generation_config = choose_generation(args, model_dir, title_config, _load_presets(args))
    logger.info("source settings: %s", {k: settings[k] for k in ("max_source_length", "source_prefix", "batch_size")})

    titles: list[str] = []
    start = time.perf_counter()
    if records:
        engine = TitleEngine(args, model_dir, settings)
        titles = engine.generate([r[settings["text_column"]] for r in records], generation_config)
    else:
        logger.warning("%s holds no articles: writing an empty %s", args.input_file, args.output_file)
    elapsed = time.perf_counter() - start
    logger.info("%d titles in %.1f s (%.3f s/article)", len(titles), elapsed, elapsed / max(len(titles), 1))
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(args.output_file, ({"title": t, "id": r["id"]} for t, r in zip(titles, records)),
                       protected=[args.input_file])
    logger.info("wrote %s", args.output_file)
    return 0


def _load_presets(args: PredictArguments) -> dict[str, dict]:
    try:
        return load_presets(args.presets_file)
    except FileNotFoundError as err:
        raise UsageError(f"{args.presets_file}: presets file not found") from err
    except (ValueError, OSError) as err:
        raise UsageError(f"{args.presets_file or 'configs/generation_presets.json'}: {err}") from err


def sweep(args: PredictArguments) -> int:
    """Run every ``--sweep`` preset on ``--reference``, score with tw_rouge, write the report."""
    if not args.reference or not args.output_dir:
        raise UsageError("--sweep needs --reference (labelled JSON lines) and --output_dir")
    model_dir = check_model_dir(args.model_dir)
    title_config = read_title_config(model_dir)
    check_backend(args, model_dir, title_config)
    settings = resolve_settings(args, title_config)
    records = read_jsonl(args.reference, text_column=settings["text_column"], require_summary=True)
    if args.max_samples:
        records = records[: args.max_samples]
    if not records:
        raise UsageError(f"{args.reference}: no labelled articles to score the presets on")
    presets = _load_presets(args)
    base = load_base_generation_config(model_dir, settings["max_target_length"])
    overrides = generation_overrides(args)
    for name in args.sweep:
        if os.sep in name or (os.altsep and os.altsep in name) or name.startswith("."):
            raise UsageError(f"--sweep {name!r}: a preset name cannot be used as a file name")
    configs = {name: resolve_generation(base, name, overrides, presets) for name in dict.fromkeys(args.sweep)}
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir}: is a file, not a directory")
    for name in [f"{preset}.jsonl" for preset in configs] + ["sweep.md", "sweep.csv", "sweep.png"]:
        check_output_path(output_dir / name, [args.reference])
    try:
        segmenter = get_segmenter(args.segmenter)
        if hasattr(segmenter, "check_data"):
            segmenter.check_data()
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err

    engine = TitleEngine(args, model_dir, settings)
    output_dir.mkdir(parents=True, exist_ok=True)
    texts = [r[settings["text_column"]] for r in records]
    refs = [r["title"] for r in records]
    rows = []
    for name, config in configs.items():
        logger.info("sweep preset %s: %s", name, describe_generation(config))
        start = time.perf_counter()
        titles = engine.generate(texts, config)
        seconds = (time.perf_counter() - start) / max(len(texts), 1)
        write_jsonl_atomic(output_dir / f"{name}.jsonl", ({"title": t, "id": r["id"]} for t, r in zip(titles, records)),
                           protected=[args.reference])
        scores = get_rouge(titles, refs, avg=True, segmenter=segmenter)
        rows.append({"preset": name, **{m: 100 * scores[m]["f"] for m in ("rouge-1", "rouge-2", "rouge-l")},
                     "mean_title_chars": sum(len(t) for t in titles) / max(len(titles), 1),
                     "seconds_per_article": seconds, "num_articles": len(titles)})
        logger.info("%s: R-1 %.2f  R-2 %.2f  R-L %.2f  (%.3f s/article)", name, rows[-1]["rouge-1"],
                    rows[-1]["rouge-2"], rows[-1]["rouge-l"], seconds)
    atomic_write_text(output_dir / "sweep.csv", sweep_csv(rows))
    atomic_write_text(output_dir / "sweep.md", sweep_markdown(rows, args, segmenter.name))
    sweep_plot(rows, output_dir / "sweep.png")
    logger.info("wrote %s/sweep.{md,csv,png}", output_dir)
    print(sweep_markdown(rows, args, segmenter.name))
    return 0


SWEEP_COLUMNS = ("preset", "rouge-1", "rouge-2", "rouge-l", "mean_title_chars", "seconds_per_article", "num_articles")


def sweep_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text: ROUGE F x 100, mean title length (characters), seconds per article."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def sweep_markdown(rows: list[dict[str, Any]], args: PredictArguments, segmenter: str) -> str:
    """A Markdown table of the sweep, with what was run."""
    lines = [f"# Decoding sweep: {args.model_dir} on {args.reference} ({rows[0]['num_articles'] if rows else 0} "
             f"articles, backend {args.backend}, segmenter {segmenter})", "",
             "| preset | ROUGE-1 F | ROUGE-2 F | ROUGE-L F | mean title chars | s/article |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['rouge-1']:.2f} | {r['rouge-2']:.2f} | {r['rouge-l']:.2f} | "
                     f"{r['mean_title_chars']:.1f} | {r['seconds_per_article']:.3f} |")
    return "\n".join(lines) + "\n"


def sweep_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of ROUGE F per preset (left) and seconds per article (right), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["preset"] for r in rows]
    fig, (ax_rouge, ax_time) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4))
    width = 0.27
    for k, metric in enumerate(("rouge-1", "rouge-2", "rouge-l")):
        ax_rouge.bar([i + (k - 1) * width for i in range(len(rows))], [r[metric] for r in rows], width,
                     label=metric.upper())
    ax_rouge.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax_rouge.set_ylabel("F x 100")
    ax_rouge.legend()
    ax_rouge.set_title("ROUGE by decoding preset")
    ax_time.bar(range(len(rows)), [r["seconds_per_article"] for r in rows], color="grey")
    ax_time.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax_time.set_ylabel("seconds per article")
    ax_time.set_title("speed")
    fig.tight_layout()
    save_figure_atomic(fig, path)


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> PredictArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PredictArguments, description=__doc__.split("\n")[0], allow_abbrev=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unknown:
            raise UsageError(f"unknown option(s) {' '.join(unknown)} (predict.py --help lists them)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.INFO))
    try:
        return sweep(args) if args.sweep else predict(args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - report, never leave a partial output
        logger.debug("traceback", exc_info=True)
        print(f"error: prediction failed: {type(err).__name__}: {err} (--log_level debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

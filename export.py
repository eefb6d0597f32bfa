"""The contract between training and prediction: the export, its ``TitleConfig``, and checkpoints.

An **export** is a ``save_pretrained`` directory that ``run.sh`` / ``predict.py``, the CTranslate2 backend,
the benchmarks and ``transformers.from_pretrained`` all load: model weights, ``config.json``, the tokenizer,
``generation_config.json`` (the decoding strategy ``model.generate()`` uses by default) and
``title_config.json``, a :class:`TitleConfig`: the source-side settings training used (prediction must
truncate and prefix articles the same way), the decoding preset the export recommends, and the validation
scores it was chosen with. :class:`TitleConfig` holds the one set of defaults, used for an export that
has no ``title_config.json`` (any mT5 from the hub).

A **checkpoint** (``OUTPUT_DIR/checkpoints/step_N``) is what resumes training exactly:
``accelerator.save_state`` (model, optimizer, scheduler, RNG states) plus a :class:`TrainingState`
(``training_state.json``: step, epoch, position in the epoch, best score, early-stopping count). Both kinds
of directory are built in a temporary sibling and swapped in (:func:`swap_dir`), so a crash never leaves a
half-written one where a complete one was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from data_io import atomic_write_text, write_jsonl_atomic

logger = logging.getLogger(__name__)

TITLE_CONFIG_FILE = "title_config.json"
STATE_FILE = "training_state.json"
ARGS_FILE = "args.json"
FORMAT_VERSION = 1  # of title_config.json; version 0 = the files written before it had a version
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
PROMPT_ADAPTER_DIR = "prompt_adapter"  # a prompt-tuned export's peft adapter (the soft prompt), beside the base
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_CARD_FILE = "README.md"


class ExportError(ValueError):
    """An export, ``title_config.json`` or checkpoint that cannot be used; the message names the file."""


# ----------------------------------------------------------------------------------------------------
# TitleConfig


@dataclass
class TitleConfig:
    """What an export tells prediction (``title_config.json``). Defaults apply to exports without one.

    Attributes:
        max_source_length: articles are truncated to this many tokens (as in training).
        max_target_length: title limit in tokens, used when ``generation_config.json`` sets none.
        source_prefix: text put before every article (e.g. ``"summarize: "``).
        text_column: the JSON field holding the article.
        per_device_eval_batch_size: articles per ``generate`` call.
        generation_preset: the decoding preset (``configs/generation_presets.json``) whose settings are in
            the export's ``generation_config.json``; what ``run.sh`` uses unless ``PRESET`` names another.
        generation_preset_reason: why that preset (selected on validation, the evaluation preset, default).
        eval_preset: the preset the validation ``metrics`` were measured with.
        segmenter: the tw_rouge segmenter of ``metrics`` (``ckip`` grades; ``jieba``/``char`` differ).
        step: the optimizer step the export was taken at.
        metrics: validation scores (``eval/rouge-1`` ... F x100) at ``step``.
        preset_scores: validation scores of every preset tried when the strategy was selected
            (``{preset: {"eval/rouge-1": ..., ...}}``), empty when none was.
        prompt_adapter: for a prompt-tuned export (``--peft_method prompt_tuning``), the subdirectory holding
            the peft adapter (the soft prompt) that must be applied to the base weights beside it; None for a
            plain model (full fine-tuning, or LoRA merged into the weights). Load with :func:`load_model`.
        format_version: of this file; newer versions are refused with a clear message.
    """

    max_source_length: int = 512
    max_target_length: int = 64
    source_prefix: str = ""
    text_column: str = "maintext"
    per_device_eval_batch_size: int = 32
    generation_preset: str = "beam5"  # the best-known strategy for this task (beam search, 4-5 beams)
    generation_preset_reason: str = "default (the export records no decoding strategy)"
    eval_preset: str | None = None
    segmenter: str | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    preset_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    prompt_adapter: str | None = None
    format_version: int = FORMAT_VERSION

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/title_config.json`` atomically and return its path."""
        path = Path(directory) / TITLE_CONFIG_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TitleConfig":
        """Read ``directory/title_config.json``; the defaults when the export has none.

        Raises:
            ExportError: unreadable or malformed file, unknown keys, wrong types, a newer format version.
        """
        path = Path(directory) / TITLE_CONFIG_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: cannot read: {err}") from err
        except json.JSONDecodeError as err:
            raise ExportError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: Any, path: str | os.PathLike = TITLE_CONFIG_FILE) -> "TitleConfig":
        """Validate a decoded ``title_config.json``.

        Raises:
            ExportError: naming ``path`` and the offending key.
        """
        if not isinstance(raw, dict):
            raise ExportError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        version = raw.pop("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ExportError(f"{path}: format_version must be a non-negative integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ExportError(f"{path}: format_version {version} is newer than this code understands "
                              f"({FORMAT_VERSION}); update the project or re-export the model")
        known = {f.name for f in fields(cls)} - {"format_version"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ExportError(f"{path}: unknown key(s) {', '.join(unknown)} (format_version {version})")
        values = {k: v for k, v in raw.items() if v is not None}
        if version == 0 and "eval_preset" in values and "generation_preset" not in values:
            # version-0 exports were always decoded with the fixed beam5 of the old run.sh
            values["generation_preset_reason"] = "default (a format-0 export records no decoding strategy)"
        config = cls(**values)
        config.validate(path)
        return config

    def validate(self, path: str | os.PathLike = TITLE_CONFIG_FILE) -> None:
        """Check every field's type and range.

        Raises:
            ExportError: naming ``path`` and the field.
        """
        def fail(name: str, expected: str) -> None:
            raise ExportError(f"{path}: {name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("max_source_length", "max_target_length", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "a positive integer")
        for name in ("source_prefix", "text_column", "generation_preset", "generation_preset_reason"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        if not self.text_column or not self.generation_preset:
            fail("text_column" if not self.text_column else "generation_preset", "a non-empty string")
        for name in ("eval_preset", "segmenter", "prompt_adapter"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                fail(name, "a string or null")
        if self.step is not None and (not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 0):
            fail("step", "a non-negative integer or null")
        if not _is_score_map(self.metrics):
            fail("metrics", "an object of metric name: number")
        if not isinstance(self.preset_scores, dict) or not all(
                isinstance(k, str) and _is_score_map(v) for k, v in self.preset_scores.items()):
            fail("preset_scores", "an object of preset name: {metric name: number}")


def _is_score_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items())


# ----------------------------------------------------------------------------------------------------
# exports


def check_export(model_dir: str | os.PathLike | None) -> Path:
    """Check that ``model_dir`` looks like a ``save_pretrained`` export before anything is loaded.

    Raises:
        ExportError: missing directory, no (valid) ``config.json``, no weights, no tokenizer files, or a
            malformed ``title_config.json``.
    """
    if not model_dir:
        raise ExportError("no model directory given (a save_pretrained export of the trained model)")
    path = Path(model_dir)
    if not path.is_dir():
        raise ExportError(f"{model_dir}: model directory not found" if not path.exists()
                          else f"{model_dir}: not a directory")
    config = path / "config.json"
    if not config.is_file():
        raise ExportError(f"{model_dir}: not a model directory (no config.json); expected the export written by "
                          "training (config.json, model.safetensors, tokenizer files)")
    try:
        config_fields = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{config}: not a valid model config ({err})") from err
    if not isinstance(config_fields, dict) or "model_type" not in config_fields:
        raise ExportError(f"{config}: not a transformers model config (no 'model_type')")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ExportError(f"{model_dir}: no model weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ExportError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                          "with the model")
    adapter = TitleConfig.load(path).prompt_adapter
    missing = [name for name in ADAPTER_FILES if adapter and not (path / adapter / name).is_file()]
    if missing:
        raise ExportError(f"{model_dir}: a prompt-tuned export without its soft prompt ({adapter}/"
                          f"{', '.join(missing)} missing); copy the whole export directory")
    return path


def load_model(model_dir: str | os.PathLike):
    """Load an export for generation: ``AutoModelForSeq2SeqLM.from_pretrained``, and for a prompt-tuned
    export the base model wrapped by ``peft.PeftModel.from_pretrained`` with its soft prompt (whose
    ``generate`` prepends the prompt to every article). Returns the model in eval mode, on the CPU.

    Raises:
        ExportError: a malformed ``title_config.json``.
        OSError / ValueError: what transformers and peft raise for unreadable weights.
    """
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    adapter = TitleConfig.load(model_dir).prompt_adapter
    if adapter:
        from peft import PeftModel  # optional dependency, loaded for prompt-tuned exports only

        model = PeftModel.from_pretrained(model, str(Path(model_dir) / adapter))
    return model.eval()


def write_export(out_dir: str | os.PathLike, model, tokenizer, generation_config, title_config: TitleConfig,
                 eval_predictions: Iterable[dict] | None = None, model_card: str | None = None) -> Path:
    """Write an export: ``model.save_pretrained`` (with ``generation_config`` as its
    ``generation_config.json``), the tokenizer, ``title_config.json``, optionally ``eval_predictions.jsonl``
    and the model card ``README.md``, built in ``.NAME.tmp`` beside ``out_dir`` and swapped in whole.

    Call on the main process only, with the unwrapped (and, for LoRA, merged) model. A peft prompt-learning
    model (it cannot be merged) is saved as its base model plus the adapter in ``prompt_adapter/``, and
    ``title_config.prompt_adapter`` says so.
    """
    final = Path(out_dir)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.generation_config = generation_config
    base.save_pretrained(str(tmp))
    title_config.prompt_adapter = None
    if base is not model:
        model.save_pretrained(str(tmp / PROMPT_ADAPTER_DIR))
        (tmp / PROMPT_ADAPTER_DIR / MODEL_CARD_FILE).unlink(missing_ok=True)  # peft's stub card; ours is above
        title_config.prompt_adapter = PROMPT_ADAPTER_DIR
    tokenizer.save_pretrained(str(tmp))
    title_config.save(tmp)
    if model_card is not None:
        atomic_write_text(tmp / MODEL_CARD_FILE, model_card)
    if eval_predictions is not None:
        write_jsonl_atomic(tmp / "eval_predictions.jsonl", eval_predictions)
    swap_dir(tmp, final)
    return final


def swap_dir(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp``: the old one is moved aside first and removed last, so at
    every moment either the old or the new complete directory is at ``final`` (or beside it)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class TrainingState:
    """Runtime progress saved with every checkpoint (never written back into the configuration).

    ``epoch`` counts completed passes over the training data and ``batches_in_epoch`` the dataloader
    batches of the current pass already consumed (per process), which is what resuming mid-epoch needs.
    """

    completed_steps: int = 0  # optimizer steps
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0  # training wall time, seconds, summed over resumed runs
    evaluations_without_improvement: int = 0  # in a row, for --early_stopping_patience
    stopped_early_at: int | None = None  # the step early stopping ended training at
    start_title_stats: dict[str, float] | None = None  # the starting evaluation's title statistics (RL guard)
    saved_at: float = 0.0  # Unix time the checkpoint was written: orders checkpoints of resumed runs

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainingState":
        """Raises: ExportError for an unreadable file or unknown fields (naming the file)."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
            raise ExportError(f"{path}: not a valid training state ({err})") from err


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, in the order they were written (oldest
    first; by the ``saved_at`` of their state, then by step): after a resume from an earlier checkpoint the
    new ones come last even though their steps are lower than those of the abandoned run."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: (_saved_at(p), int(p.name[5:])))


def _saved_at(checkpoint: Path) -> float:
    try:
        return float(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")).get("saved_at", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, state: TrainingState, output_dir: str | os.PathLike, save_total_limit: int,
                    hyperparameters: dict | None = None) -> Path:
    """``accelerator.save_state`` (model, optimizer, scheduler, RNG) plus ``training_state.json`` (and the
    run's ``hyperparameters`` as ``args.json``, which a resume compares with its own) into
    ``checkpoints/step_N`` (temp dir + swap), then remove the oldest beyond ``save_total_limit`` (never the
    one just written). Call on every process (``save_state`` is collective)."""
    final = checkpoint_dir(output_dir, state.completed_steps)
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state.saved_at = time.time()
        state.save(tmp / STATE_FILE)
        if hyperparameters is not None:
            atomic_write_text(tmp / ARGS_FILE, json.dumps(hyperparameters, indent=2, ensure_ascii=False) + "\n")
        swap_dir(tmp, final)
        others = [p for p in list_checkpoints(output_dir) if p.resolve() != final.resolve()]
        for old in others[: max(len(others) - (save_total_limit - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir: str | os.PathLike, checkpoint: str) -> Path | None:
    """``latest`` -> the newest complete checkpoint under ``output_dir`` (None when there is none);
    a path -> that path, checked.

    Raises:
        ExportError: the path is not a checkpoint directory.
    """
    if checkpoint == "latest":
        return latest_checkpoint(output_dir)
    path = Path(checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ExportError(f"--resume_from_checkpoint {path}: not a checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(accelerator, path: str | os.PathLike) -> TrainingState:
    """Restore model, optimizer, scheduler and RNG states from ``path`` and return its state.

    Raises:
        ExportError: an unreadable or corrupt checkpoint; the message names it and the previous complete
            checkpoint to resume from instead, if there is one.
    """
    path = Path(path)
    try:
        state = TrainingState.load(path / STATE_FILE)
        accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors, torch.load and accelerate raise many types
        earlier = [p for p in list_checkpoints(path.parent.parent) if p.resolve() != path.resolve()]
        offer = (f"; the previous complete checkpoint is {earlier[-1]}: resume from it with "
                 f"--resume_from_checkpoint {earlier[-1]}") if earlier else ""
        raise ExportError(f"{path}: cannot load this checkpoint ({type(err).__name__}: {err}){offer}") from err
    return state


def checkpoint_hyperparameters(path: str | os.PathLike) -> dict | None:
    """The hyperparameters a checkpoint was saved with (its ``args.json``), or None for an older one."""
    try:
        return json.loads((Path(path) / ARGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

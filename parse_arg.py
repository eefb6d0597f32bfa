"""Arguments of ``train_decoder.py``: typed dataclasses parsed with ``transformers.HfArgumentParser``.

    python train_decoder.py [PRESET.json] [--flag value ...]

An optional JSON preset comes first; flags after it override its values, which override the
defaults below. ``--help`` lists every option. :func:`check_args` validates everything up front,
before a model is loaded, so a typo fails in a second rather than after an hour of training.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser

from data_io import DataError, atomic_write_text, check_output_path
from export import PROMPT_ADAPTER_DIR, TitleConfig
from generation import load_presets
from rewards import REWARDS
from tw_rouge import CkipSegmenter, get_segmenter

OPTIMIZERS = ("adafactor", "adamw")
PRECISIONS = ("no", "bf16", "fp16")
PEFT_METHODS = ("none", "lora", "prompt_tuning")
PROMPT_INITS = ("random", "text")
DEFAULT_VALIDATION_FILE = "data/public.jsonl"  # the course's labelled public set
FREEZABLE = ("encoder", "decoder", "embeddings")
BEST_METRICS = ("rouge-sum", "rouge-1", "rouge-2", "rouge-l", "loss")
OBJECTIVES = ("title", "span_corruption", "text_infilling")  # pretraining.OBJECTIVES
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


class ArgumentError(ValueError):
    """An invalid argument combination; the message says which flag and why."""


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default="google/mt5-small", metadata={"help": "Pretrained model: hub name or local save_pretrained dir."})
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Local MT5Config JSON: train a randomly initialised model from scratch "
                                        "(then --model_name_or_path is ignored)."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer (hub name or dir). Default: the model's; from scratch without it, "
                                        "a sentencepiece unigram tokenizer is trained on the training texts."})
    tokenizer_vocab_size: int = field(
        default=8000, metadata={"help": "Pieces of the sentencepiece tokenizer trained from scratch."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward: less memory, ~30% slower."})
    freeze: list[str] = field(
        default_factory=list, metadata={"help": "Parts to freeze, any of: encoder decoder embeddings."})
    peft_method: str = field(
        default="none", metadata={"help": "Parameter-efficient fine-tuning with peft: none (train all weights), lora "
                                          "(low-rank adapters, merged into the export) or prompt_tuning (a learned "
                                          "soft prompt of --num_virtual_tokens embeddings before every article, "
                                          "Lester et al. 2021; the export keeps the base weights plus the adapter "
                                          "in prompt_adapter/, and predicts with --backend hf only)."})
    use_lora: bool = field(default=False, metadata={"help": "The same as --peft_method lora (kept for old commands)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
        metadata={"help": "T5 module names that get LoRA adapters."})
    num_virtual_tokens: int = field(
        default=20, metadata={"help": "--peft_method prompt_tuning: soft-prompt length in tokens (the trainable "
                                      "parameters are num_virtual_tokens x d_model)."})
    prompt_tuning_init: str = field(
        default="random", metadata={"help": "--peft_method prompt_tuning: initialise the soft prompt randomly (random) "
                                            "or from the embeddings of --prompt_tuning_init_text's tokens (text, "
                                            "repeated or cut to --num_virtual_tokens; peft's PromptTuningInit)."})
    prompt_tuning_init_text: Optional[str] = field(
        default=None, metadata={"help": "--prompt_tuning_init text: the words the prompt starts from, e.g. "
                                        "'為這篇新聞寫一個標題：'."})
    prune_vocabulary: bool = field(
        default=False, metadata={"help": "Before training, cut the pretrained model's vocabulary to the pieces the "
                                         "training and validation texts use (plus single-character fallback; "
                                         "prune_vocab.py), saved in OUTPUT_DIR/pruned_model: faster steps, less "
                                         "memory, a smaller export."})
    prune_keep_top: Optional[int] = field(
        default=None, metadata={"help": "With --prune_vocabulary: keep only the N most frequent corpus pieces."})
    prune_min_count: int = field(
        default=1, metadata={"help": "With --prune_vocabulary: keep corpus pieces seen at least this often."})

    @property
    def peft(self) -> str:
        """``--peft_method`` with ``--use_lora`` as its alias (``check_args`` also writes it back)."""
        return "lora" if self.use_lora and self.peft_method == "none" else self.peft_method


@dataclass
class DataArguments:
    train_file: Optional[str] = field(default="data/train.jsonl", metadata={"help": "Training JSON lines."})
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Validation JSON lines (scored with tw_rouge). Default: data/public.jsonl, "
                                        "unless --validation_split_percentage holds validation data out of "
                                        "--train_file instead."})
    validation_split_percentage: float = field(
        default=0.0, metadata={"help": "Without --validation_file: hold this percentage of --train_file's articles "
                                       "out as validation data (by id, so an article is never on both sides; "
                                       "the same --seed gives the same split). 0 = off. The 2024 course rules: "
                                       "do not train on public.jsonl, split validation data from train.jsonl."})
    # the defaults shared with prediction come from the export contract (export.TitleConfig)
    text_column: str = field(default=TitleConfig.text_column, metadata={"help": "Field with the article."})
    summary_column: str = field(default="title", metadata={"help": "Field with the reference title."})
    source_prefix: str = field(default=TitleConfig.source_prefix,
                               metadata={"help": "Text put before every article (e.g. 'summarize: ')."})
    max_source_length: int = field(default=TitleConfig.max_source_length,
                                   metadata={"help": "Articles are truncated to this many tokens."})
    max_target_length: int = field(
        default=TitleConfig.max_target_length,
        metadata={"help": "Titles are truncated to this many tokens; also the max new tokens at eval."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training pairs."})
    objective: str = field(
        default="title", metadata={"help": "title: supervised article -> title. span_corruption (T5) or "
                                           "text_infilling (BART denoising): self-supervised pretraining on "
                                           "unlabelled text (--pretrain_files, default the training file's "
                                           "articles and titles); validated by the objective's loss on the "
                                           "validation file's texts. See pretraining.py."})
    pretrain_files: list[str] = field(
        default_factory=list, metadata={"help": "Unlabelled text for --objective span_corruption/text_infilling: "
                                                "JSON lines (the --text_column and --summary_column fields) or "
                                                "plain text (one text per line). Default: --train_file."})
    noise_density: float = field(default=0.15, metadata={"help": "span_corruption: share of tokens corrupted."})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "span_corruption: mean span, tokens."})
    mask_ratio: float = field(default=0.3, metadata={"help": "text_infilling: share of tokens masked."})
    poisson_lambda: float = field(default=3.0, metadata={"help": "text_infilling: mean span length (Poisson)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N validation pairs."})


@dataclass
class TrainArguments:
    output_dir: str = field(default="outputs/mt5-small", metadata={"help": "Checkpoints, best/ export, metrics."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start over in a used --output_dir: its checkpoints, best/, metrics and "
                                         "other run files are deleted first (without it a used one is refused, "
                                         "unless --resume_from_checkpoint)."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, data order, dropout)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch per device."})
    per_device_eval_batch_size: int = field(default=TitleConfig.per_device_eval_batch_size,
                                            metadata={"help": "Generation batch per device at eval (and the "
                                                              "prediction batch recorded in the export)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    optimizer: str = field(default="adafactor", metadata={"help": "adafactor (T5 recipe: fixed lr, no "
                                                                   "parameter scaling) or adamw."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (not on biases/LayerNorm)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    num_train_epochs: float = field(default=10, metadata={"help": "Epochs (ignored when --max_train_steps > 0)."})
    max_train_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0 = from --num_train_epochs."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers.get_scheduler name."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup optimizer steps (overrides warmup_ratio)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup as a fraction of total steps."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy."})
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (fp16 is refused for T5 models "
                                                                  "unless --force_fp16)."})
    force_fp16: bool = field(default=False, metadata={"help": "Allow fp16 with a T5-family model anyway."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch articles of similar length together."})
    logging_steps: int = field(default=50, metadata={"help": "Log training loss every N optimizer steps."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N optimizer steps (0 = off)."})
    eval_every_epoch: bool = field(default=True, metadata={"help": "Evaluate at the end of each epoch."})
    eval_on_start: bool = field(default=False, metadata={"help": "Evaluate before the first step."})
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps (0 = off)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most N resumable checkpoints."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "A checkpoint dir, or 'latest' for the newest in OUTPUT_DIR/checkpoints."})
    metric_for_best_model: str = field(
        default="rouge-sum", metadata={"help": "rouge-sum (ROUGE-1+2+L F) | rouge-1 | rouge-2 | rouge-l (higher "
                                               "is better); the pretraining objectives always use loss."})
    report_to: Optional[str] = field(
        default=None, metadata={"help": "Accelerate tracker(s), e.g. tensorboard or wandb (comma-separated)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop training after N evaluations in a row without an improvement of "
                                     "--metric_for_best_model (0 = off). best/ keeps the best model either way."})
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "With --early_stopping_patience: an evaluation improves only when it beats the "
                                       "best so far by more than this (ROUGE points x100, or loss)."})
    torch_compile: bool = field(
        default=False, metadata={"help": "Compile the model with torch.compile (inductor, through Accelerate's dynamo "
                                         "option) for faster GPU steps after a compilation warm-up. CUDA only: "
                                         "refused on CPU-only machines, where it does not help."})


@dataclass
class EvalArguments:
    eval_preset: str = field(default="greedy", metadata={"help": "Decoding preset for evaluation "
                                                                   "(configs/generation_presets.json)."})
    presets_file: Optional[str] = field(default=None, metadata={"help": "Another decoding presets JSON."})
    segmenter: Optional[str] = field(
        default=None, metadata={"help": "tw_rouge segmenter ckip | jieba | char (default: $TW_ROUGE_SEGMENTER, "
                                        "else ckip, the grading one)."})
    eval_max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Max title tokens at eval (default: --max_target_length)."})
    select_generation_presets: list[str] = field(
        default_factory=lambda: list(DEFAULT_SELECTION),
        metadata={"help": "After training, decode the validation set with each of these presets using best/, "
                          "score them, and write the winner (by --metric_for_best_model) into best/'s "
                          "generation_config.json and title_config.json: run.sh then decodes with it. Give "
                          "'none' to keep the evaluation preset."})


@dataclass
class RLArguments:
    rl_from: Optional[str] = field(
        default=None, metadata={"help": "Run the RL stage (self-critical sequence training) starting from this "
                                        "supervised save_pretrained export (e.g. outputs/mt5-small/best)."})
    rl_num_samples: int = field(default=1, metadata={"help": "Sampled titles per article per step."})
    rl_gamma: float = field(
        default=0.998, metadata={"help": "Weight of the RL loss in gamma*L_rl + (1-gamma)*L_ml "
                                         "(Paulus et al. 2018 used 0.9984)."})
    rl_rollout_preset: str = field(default="rl_sample", metadata={"help": "Decoding preset for the samples."})
    rl_baseline_preset: str = field(default="greedy", metadata={"help": "Decoding preset for the baseline."})
    rl_reward_weights: list[float] = field(
        default_factory=lambda: [1.0, 1.0, 1.0],
        metadata={"help": "Weights of ROUGE-1, ROUGE-2, ROUGE-L F in the reward (default: their mean)."})
    rl_reward: str = field(
        default="rouge", metadata={"help": "Reward (rewards.py): rouge (ROUGE F1 against the reference), "
                                           "rouge_length (minus --rl_length_penalty x relative length error) or "
                                           "rouge_repetition (minus --rl_repetition_penalty x the title's "
                                           "repeated character 3-gram share)."})
    rl_length_penalty: float = field(
        default=0.5, metadata={"help": "rouge_length: weight of |len(title) - len(reference)| / len(reference)."})
    rl_repetition_penalty: float = field(
        default=1.0, metadata={"help": "rouge_repetition: weight of the title's rep-3, 1 - distinct/all over its "
                                       "character 3-grams."})
    rl_baseline: str = field(
        default="auto", metadata={"help": "Self-critical baseline: greedy (Rennie et al. 2017), loo (leave-one-out "
                                          "mean of the other samples, Kool et al. 2019), or auto (greedy for one "
                                          "sample per article, loo for several)."})
    rl_normalize: str = field(
        default="sequence", metadata={"help": "Policy-gradient loss normalisation: sequence (each sample weighs the "
                                              "same) or token (each sampled token weighs the same)."})
    rl_degeneration_tolerance: float = field(
        default=0.0, metadata={"help": "RL stage and its control: an evaluation whose mean title length or share of "
                                       "titles with a repeated character 3-gram is more than this fraction above "
                                       "the starting evaluation's (step 0) cannot become the best export, however "
                                       "high its ROUGE (e.g. 0.1; 0 = off)."})
    rl_kl_coef: float = field(
        default=0.0, metadata={"help": "Weight of the KL anchor: per-token KL of the policy to the frozen "
                                       "--rl_from model on the sampled titles, added to the loss (Ziegler et al. "
                                       "2019, RL4LMs); 0 = off."})
    rl_control: bool = field(
        default=False, metadata={"help": "The RL stage's same-budget control: continue SUPERVISED training from "
                                         "--rl_from with every other setting of the RL run (steps, batch, optimizer, "
                                         "lr, evaluation), so an RL result can be shown beside it."})


DEFAULT_SELECTION = ("greedy", "beam4", "beam4_norepeat", "beam5")
"""The decoding presets tried after training by default (``--select_generation_presets``)."""

ARG_CLASSES = (ModelArguments, DataArguments, TrainArguments, EvalArguments, RLArguments)


@dataclass
class Args:
    model: ModelArguments
    data: DataArguments
    train: TrainArguments
    eval: EvalArguments
    rl: RLArguments
    argv: list[str] = field(default_factory=list)  # the command line as given (the model card quotes it)

    def to_dict(self) -> dict:
        return {group: vars(getattr(self, group)).copy() for group in ("model", "data", "train", "eval", "rl")}


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(ARG_CLASSES, allow_abbrev=False)  # a typo must not select another flag
    parser.prog = "train_decoder.py"
    parser.usage = "train_decoder.py [PRESET.json] [--flag value ...]"
    return parser


def parse_args(argv: list[str] | None = None) -> Args:
    """Parse ``[PRESET.json] [--flag value ...]``: preset values override defaults, flags override both.

    Raises:
        ArgumentError: unreadable preset, a preset key that is not an option, or an unknown flag.
        SystemExit: argparse's own errors (bad value, missing value; exit status 2) and ``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = list(argv)
    parser = build_parser()
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        preset_path = resolve_repo_path(argv.pop(0))
        parser.set_defaults(**read_preset(preset_path))
    *groups, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise ArgumentError(f"unknown option(s) {' '.join(unknown)} (train_decoder.py --help lists them; a preset "
                            "JSON must come first)")
    return Args(*groups, argv=command)


def read_preset(path: str) -> dict:
    """Option values from a JSON preset (keys starting with ``_`` are comments)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as err:
        raise ArgumentError(f"preset {path} not found") from err
    except json.JSONDecodeError as err:
        raise ArgumentError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err
    if not isinstance(raw, dict):
        raise ArgumentError(f"{path}: a preset must be a JSON object of option: value")
    known = {f.name for cls in ARG_CLASSES for f in fields(cls)}
    values = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArgumentError(f"{path}: unknown option(s) {', '.join(unknown)} (see train_decoder.py --help)")
    return values


REPO_ROOT = Path(__file__).resolve().parent


def resolve_repo_path(path: str | None) -> str | None:
    """``path`` as given when it exists from the current directory, else relative to the repo root
    (so shipped presets can name ``configs/...`` and still work from another directory)."""
    if path is None or Path(path).exists() or Path(path).is_absolute():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def check_args(args: Args) -> None:
    """Validate invariants before any heavy work (after nanoT5's ``check_args_and_env``).

    Raises:
        ArgumentError: naming the flag and what is wrong with it.
    """
    m, d, t, e, r = args.model, args.data, args.train, args.eval, args.rl
    problems: list[str] = validation_source_problems(d)
    m.config_name = resolve_repo_path(m.config_name)
    e.presets_file = resolve_repo_path(e.presets_file)
    d.train_file, d.validation_file = resolve_repo_path(d.train_file), resolve_repo_path(d.validation_file)

    def need(cond: bool, message: str) -> None:
        if not cond:
            problems.append(message)

    if r.rl_from is None:
        need(bool(m.config_name or m.model_name_or_path), "give --model_name_or_path or --config_name")
    if m.config_name:
        need(Path(m.config_name).is_file(), f"--config_name {m.config_name}: file not found")
    elif m.model_name_or_path and looks_local(m.model_name_or_path):
        need(Path(m.model_name_or_path, "config.json").is_file(),
             f"--model_name_or_path {m.model_name_or_path}: not a save_pretrained export (no config.json)"
             + (PRETRAIN_HINT if "tiny-cpu-pretrain" in m.model_name_or_path else ""))
    if r.rl_from is not None:
        need(Path(r.rl_from, "config.json").is_file(),
             f"--rl_from {r.rl_from}: not a save_pretrained export (no config.json)")
    for flag, path in (("--train_file", d.train_file), ("--validation_file", d.validation_file)):
        need((path is None and flag == "--validation_file" and d.validation_split_percentage > 0)
             or (path is not None and Path(path).is_file()), f"{flag} {path}: file not found")
    for flag, value in (("--max_source_length", d.max_source_length), ("--max_target_length", d.max_target_length),
                        ("--per_device_train_batch_size", t.per_device_train_batch_size),
                        ("--per_device_eval_batch_size", t.per_device_eval_batch_size),
                        ("--gradient_accumulation_steps", t.gradient_accumulation_steps),
                        ("--logging_steps", t.logging_steps), ("--save_total_limit", t.save_total_limit),
                        ("--tokenizer_vocab_size", m.tokenizer_vocab_size), ("--rl_num_samples", r.rl_num_samples)):
        need(value > 0, f"{flag} must be > 0 (got {value})")
    for flag, value in (("--max_train_samples", d.max_train_samples), ("--max_eval_samples", d.max_eval_samples)):
        need(value is None or value > 0, f"{flag} must be > 0 (got {value})")
    for flag, value in (("--max_train_steps", t.max_train_steps), ("--eval_steps", t.eval_steps),
                        ("--save_steps", t.save_steps), ("--warmup_steps", t.warmup_steps)):
        need(value >= 0, f"{flag} must be >= 0 (got {value})")
    floats = [(f"--{f.name}", getattr(group, f.name)) for group in (m, d, t, e, r) for f in fields(group)
              if isinstance(getattr(group, f.name), float)]
    floats += [("--rl_reward_weights", w) for w in r.rl_reward_weights]
    for flag, value in floats:
        need(math.isfinite(value), f"{flag} must be a finite number (got {value})")
    need(t.max_train_steps > 0 or t.num_train_epochs > 0, "--num_train_epochs must be > 0 (or set --max_train_steps)")
    need(t.learning_rate > 0, f"--learning_rate must be > 0 (got {t.learning_rate})")
    need(0 <= t.warmup_ratio < 1, f"--warmup_ratio must be in [0, 1) (got {t.warmup_ratio})")
    need(0 <= t.label_smoothing < 1, f"--label_smoothing must be in [0, 1) (got {t.label_smoothing})")
    need(t.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {t.optimizer})")
    need(t.lr_scheduler_type in SCHEDULERS,
         f"--lr_scheduler_type must be one of {', '.join(SCHEDULERS)} (got {t.lr_scheduler_type})")
    need(t.mixed_precision in PRECISIONS,
         f"--mixed_precision must be one of {', '.join(PRECISIONS)} (got {t.mixed_precision})")
    if t.mixed_precision == "fp16" and not t.force_fp16:
        problems.append(
            "--mixed_precision fp16 is refused for T5-family models: T5/mT5 were pretrained in bf16 and their "
            "feed-forward activations overflow fp16's range, giving inf/NaN losses (transformers issues #10830, "
            "#14189). Use bf16 (Ampere or newer GPUs) or no; pass --force_fp16 to try anyway.")
    need(all(part in FREEZABLE for part in m.freeze),
         f"--freeze takes any of {', '.join(FREEZABLE)} (got {' '.join(m.freeze)})")
    need(t.metric_for_best_model in BEST_METRICS,
         f"--metric_for_best_model must be one of {', '.join(BEST_METRICS)} (got {t.metric_for_best_model})")
    need(d.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)} (got {d.objective})")
    if d.objective != "title":
        t.metric_for_best_model = "loss"  # ROUGE of titles means nothing for a denoising model
        need(r.rl_from is None and not m.prune_vocabulary, "--objective pretraining cannot be combined with "
             "--rl_from or --prune_vocabulary")
        need(0 < d.noise_density < 1 and 0 < d.mask_ratio < 1 and d.mean_noise_span_length > 0
             and d.poisson_lambda > 0, "--noise_density and --mask_ratio must be in (0, 1), the span lengths > 0")
        for path in d.pretrain_files:
            need(Path(path).is_file(), f"--pretrain_files {path}: file not found")
    else:
        need(t.metric_for_best_model != "loss", "--metric_for_best_model loss is for the pretraining objectives")
    need(e.segmenter in (None, "ckip", "jieba", "char"),
         f"--segmenter must be ckip, jieba or char (got {e.segmenter})")
    need(e.eval_max_new_tokens is None or e.eval_max_new_tokens > 0, "--eval_max_new_tokens must be > 0")
    need(0.0 <= r.rl_gamma <= 1.0, f"--rl_gamma must be in [0, 1] (got {r.rl_gamma})")
    need(len(r.rl_reward_weights) == 3 and all(w >= 0 for w in r.rl_reward_weights) and sum(r.rl_reward_weights) > 0,
         "--rl_reward_weights takes 3 non-negative numbers (ROUGE-1 2 L) with a positive sum")
    need(r.rl_reward in REWARDS, f"--rl_reward must be one of {', '.join(sorted(REWARDS))} (got {r.rl_reward})")
    need(r.rl_length_penalty >= 0 and r.rl_repetition_penalty >= 0 and r.rl_kl_coef >= 0
         and r.rl_degeneration_tolerance >= 0,
         "--rl_length_penalty, --rl_repetition_penalty, --rl_kl_coef and --rl_degeneration_tolerance must be >= 0")
    need(r.rl_baseline in ("auto", "greedy", "loo"), f"--rl_baseline must be auto, greedy or loo (got {r.rl_baseline})")
    need(r.rl_baseline != "loo" or r.rl_num_samples >= 2, "--rl_baseline loo needs --rl_num_samples >= 2")
    need(r.rl_normalize in ("sequence", "token"), f"--rl_normalize must be sequence or token (got {r.rl_normalize})")
    need(not r.rl_control or r.rl_from is not None, "--rl_control needs --rl_from (the export both runs start from)")
    need(not r.rl_degeneration_tolerance or r.rl_from is not None,
         "--rl_degeneration_tolerance needs --rl_from (its titles are the start the guard compares with)")
    problems += peft_problems(args)
    problems += training_option_problems(t)
    if m.prune_vocabulary:
        need(not m.config_name and not r.rl_from and not m.tokenizer_name,
             "--prune_vocabulary prunes a pretrained --model_name_or_path with its own tokenizer (not with "
             "--config_name, --tokenizer_name or --rl_from)")
        need(m.prune_min_count >= 1 and (m.prune_keep_top is None or m.prune_keep_top >= 1),
             "--prune_min_count and --prune_keep_top must be >= 1")
    try:
        presets = load_presets(e.presets_file)
        named = [("--eval_preset", e.eval_preset), ("--rl_rollout_preset", r.rl_rollout_preset),
                 ("--rl_baseline_preset", r.rl_baseline_preset)]
        named += [("--select_generation_presets", name) for name in selection_presets(e)]
        for flag, name in named:
            need(name in presets, f"{flag} {name!r} is not a preset; known: {', '.join(sorted(presets))}")
    except (OSError, ValueError) as err:
        problems.append(f"--presets_file: {err}")
    problems += output_dir_problems(t)
    if problems:
        message = "invalid arguments:\n  - " + "\n  - ".join(problems)
        if any(flag in p and "file not found" in p for p in problems for flag in ("--train_file", "--validation_file")):
            message += ("\n" + MISSING_DATA_HINT)
        raise ArgumentError(message)


def validation_source_problems(d: "DataArguments") -> list[str]:
    """``--validation_file`` or ``--validation_split_percentage``, not both; neither means the course's
    ``data/public.jsonl`` (set here, so the resolved file is what ``args.json`` records)."""
    split = d.validation_split_percentage
    if not (math.isfinite(split) and 0 <= split < 100):
        return [f"--validation_split_percentage must be in [0, 100) (got {split})"]
    if split > 0 and d.validation_file is not None:
        return [f"--validation_file {d.validation_file} and --validation_split_percentage {split:g} both give "
                "validation data: choose one"]
    if split > 0 and d.objective != "title":
        return ["--validation_split_percentage is for --objective title; give the pretraining objectives a "
                "--validation_file"]
    if split == 0 and d.validation_file is None:
        d.validation_file = DEFAULT_VALIDATION_FILE
    return []


def peft_problems(args: Args) -> list[str]:
    """``--peft_method`` (with ``--use_lora`` as an alias of ``lora``) and what prompt tuning cannot do.
    Sets ``use_lora`` to match the method, so both spellings save the same ``args.json``."""
    m, r = args.model, args.rl
    if m.peft_method not in PEFT_METHODS:
        return [f"--peft_method must be one of {', '.join(PEFT_METHODS)} (got {m.peft_method})"]
    if m.use_lora and m.peft_method == "prompt_tuning":
        return ["--use_lora means --peft_method lora: it cannot be combined with --peft_method prompt_tuning"]
    if m.use_lora:
        m.peft_method = "lora"
    m.use_lora = m.peft_method == "lora"
    problems = []
    if m.use_lora and m.lora_r <= 0:
        problems.append(f"--lora_r must be > 0 (got {m.lora_r})")
    if m.peft_method == "prompt_tuning":
        if m.num_virtual_tokens <= 0:
            problems.append(f"--num_virtual_tokens must be > 0 (got {m.num_virtual_tokens})")
        if m.prompt_tuning_init not in PROMPT_INITS:
            problems.append(f"--prompt_tuning_init must be random or text (got {m.prompt_tuning_init})")
        if m.prompt_tuning_init == "text" and not m.prompt_tuning_init_text:
            problems.append("--prompt_tuning_init text needs --prompt_tuning_init_text (the words to start from)")
        if r.rl_from:
            problems.append("--peft_method prompt_tuning cannot be combined with --rl_from: the RL stage trains a "
                            "plain (or LoRA) model from a plain export; prompt-tune the supervised model instead")
    if r.rl_from and Path(r.rl_from, PROMPT_ADAPTER_DIR).is_dir():
        problems.append(f"--rl_from {r.rl_from}: a prompt-tuned export (a soft prompt in {PROMPT_ADAPTER_DIR}/) "
                        "cannot start the RL stage, which needs a plain model; start it from a full or LoRA export")
    return problems


def training_option_problems(t: "TrainArguments") -> list[str]:
    """Early stopping's range, and ``--torch_compile`` only where it helps (CUDA)."""
    problems = []
    if t.early_stopping_patience < 0 or t.early_stopping_threshold < 0:
        problems.append("--early_stopping_patience and --early_stopping_threshold must be >= 0 (got "
                        f"{t.early_stopping_patience}, {t.early_stopping_threshold:g})")
    if t.torch_compile and not torch.cuda.is_available():
        problems.append("--torch_compile needs a CUDA GPU: this machine has none, and on CPU-only machines "
                        "torch.compile does not help (its compilation costs minutes and CPU steps of this model get "
                        "no faster); drop the flag")
    return problems


RUN_FILES = ("metrics.jsonl", "eval_predictions.jsonl", "learning_curve.png", "args.json", "preset_selection.md")
RUN_DIRS = ("checkpoints", "best", "tokenizer", "pruned_model")
"""What a training run writes into its --output_dir (and --overwrite_output_dir deletes)."""


def output_dir_problems(t: "TrainArguments") -> list[str]:
    """A used ``--output_dir`` is refused unless the run resumes it or starts over in it (the Hugging Face
    convention): two runs mixed in one directory would prune each other's checkpoints, replace ``best/``
    whatever its score, and interleave their metrics."""
    out = Path(t.output_dir)
    if out.exists() and not out.is_dir():
        return [f"--output_dir {out}: is a file, not a directory"]
    if t.resume_from_checkpoint and t.overwrite_output_dir:
        return ["--resume_from_checkpoint and --overwrite_output_dir contradict each other: choose one"]
    used = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if used and not (t.resume_from_checkpoint or t.overwrite_output_dir):
        shown = ", ".join(used[:6]) + (", ..." if len(used) > 6 else "")
        return [f"--output_dir {out} is not empty ({shown}): resume that run with --resume_from_checkpoint latest, "
                "start over with --overwrite_output_dir (deletes its checkpoints, best/ and metrics), or choose "
                "another --output_dir"]
    try:
        check_output_path(out / "args.json")  # the directory (or its nearest existing parent) takes files
    except DataError as err:
        return [f"--output_dir {out}: {err}"]
    return []


PRETRAIN_HINT = ("; configs/tiny-cpu.json fine-tunes the demo's pretrained model: run its stage 1 first, "
                 "bash train.sh configs/pretrain-tiny-cpu.json (or both stages: bash scripts/demo.sh)")


def looks_local(name: str) -> bool:
    """Whether ``--model_name_or_path`` names a local directory rather than a hub id (``org/name``): it
    exists, starts with ``.``, ``/`` or ``~``, or has more than one ``/``."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


MISSING_DATA_HINT = (
    "The homework data goes in data/train.jsonl and data/public.jsonl (or pass --train_file and "
    "--validation_file).\nTo try the whole pipeline offline on the sample data shipped in data/sample/:\n"
    "    bash scripts/demo.sh\n(its two stages: bash train.sh configs/pretrain-tiny-cpu.json, then "
    "bash train.sh configs/tiny-cpu.json)")


def selection_presets(e: "EvalArguments") -> list[str]:
    """``--select_generation_presets`` without ``none`` (which turns the selection off) and duplicates."""
    return [] if "none" in e.select_generation_presets else list(dict.fromkeys(e.select_generation_presets))


def check_segmenter_data(args: Args) -> None:
    """Fail before training when evaluation would need ckiptagger data that is not there.

    Raises:
        tw_rouge.CkipDataMissingError: with the download command in its message.
    """
    segmenter = get_segmenter(args.eval.segmenter)
    if isinstance(segmenter, CkipSegmenter):
        segmenter.check_data()


# How a change of each option between a checkpoint and the run resuming it is treated.
RESUME_REFUSED = ("model_name_or_path", "config_name", "tokenizer_name", "tokenizer_vocab_size", "use_lora", "lora_r",
                  "lora_alpha", "lora_target_modules", "freeze", "optimizer", "rl_from", "prune_vocabulary",
                  "prune_keep_top", "prune_min_count", "peft_method", "num_virtual_tokens",
                  "validation_split_percentage")
# with a validation split, these choose which articles are held out: a change would train on validation data
SPLIT_INPUTS = ("seed", "train_file")
RESUME_NOT_EXACT = ("objective", "pretrain_files", "noise_density", "mean_noise_span_length", "mask_ratio",
                    "poisson_lambda",
                    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "train_file",
                    "max_train_samples", "text_column", "summary_column", "source_prefix", "max_source_length",
                    "max_target_length", "group_by_length", "mixed_precision", "gradient_checkpointing",
                    "dataloader_num_workers", "rl_num_samples", "rl_rollout_preset", "rl_baseline_preset",
                    "rl_reward_weights", "rl_gamma", "rl_reward", "rl_length_penalty", "rl_repetition_penalty",
                    "rl_baseline", "rl_normalize",
                    "rl_kl_coef", "rl_control", "prompt_tuning_init", "prompt_tuning_init_text")
RESUME_IGNORED = ("resume_from_checkpoint", "overwrite_output_dir", "output_dir")


def resume_differences(saved: dict, current: Args) -> dict[str, list[str]]:
    """Compare the hyperparameters a checkpoint was saved with (``Args.to_dict()`` form) with the resuming
    run's. Returns ``{"refused": [...], "not_exact": [...], "applied": [...]}`` of ``"name: old -> new"``:

    - refused: the model or optimizer would not match the saved state (a different model, LoRA or prompt
      layout, frozen parts or optimizer class), or the validation split would change (another percentage,
      or with a split, another seed or training file: articles trained on would become validation data);
    - not_exact: accepted, but the resumed run no longer reproduces an uninterrupted one (data order, batch
      composition, sequence lengths, precision);
    - applied: everything else (learning rate and schedule, warm-up, total steps, weight decay, clipping,
      label smoothing, logging/eval/save intervals, decoding presets...), which takes effect at once.
    """
    def flat(groups: dict) -> dict:
        return {k: v for values in groups.values() for k, v in values.items()}

    old, new = flat(saved), flat(current.to_dict())
    found: dict[str, list[str]] = {"refused": [], "not_exact": [], "applied": []}
    for name in sorted(set(old) & set(new)):
        if old[name] == new[name] or name in RESUME_IGNORED:
            continue
        split_input = name in SPLIT_INPUTS and (old.get("validation_split_percentage") or 0) > 0
        kind = ("refused" if name in RESUME_REFUSED or split_input else "not_exact" if name in RESUME_NOT_EXACT
                else "applied")
        found[kind].append(f"{name}: {old[name]!r} -> {new[name]!r}")
    return found


def save_args(args: Args, path: str | os.PathLike) -> None:
    """Write the resolved configuration as JSON (atomically)."""
    atomic_write_text(path, json.dumps(args.to_dict(), indent=2, ensure_ascii=False) + "\n")

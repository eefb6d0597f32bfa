"""The model card of an export (``best/README.md``), in the Hugging Face model-card layout.

YAML front matter (language, license, library, pipeline tag, tags, base model, metrics and a
``model-index`` with the validation scores), then the sections a reader of the hub expects: model
description, training data, preprocessing, training hyperparameters, the decoding strategy, validation
scores, how to use it and the command that made it. :func:`build_model_card` is pure: training gathers
the facts (:class:`CardFacts`) and writes the text atomically beside the weights, at every export of
``best/`` and again when the decoding-preset selection after training changes ``best/``'s strategy.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from export import TitleConfig

SCORES = (("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L"))
HYPERPARAMETERS = ("optimizer", "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
                   "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                   "max_train_steps", "label_smoothing", "max_grad_norm", "mixed_precision", "seed",
                   "metric_for_best_model", "early_stopping_patience", "early_stopping_threshold", "torch_compile")
PEFT_HYPERPARAMETERS = {"lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
                        "prompt_tuning": ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text")}


@dataclass
class CardFacts:
    """What the card states, gathered by training.

    Attributes:
        name: the model's name (the card's title), e.g. ``outputs/mt5-small/best``.
        title_config: the export's contract (lengths, prefix, decoding preset and why, validation scores).
        options: the resolved training options, flat (``Args.to_dict()`` groups merged).
        command: the command line (``argv`` without the program name).
        train_records / validation_records: articles trained and validated on.
        validation_source: where the validation articles came from, in words.
        tokenizer: which tokenizer, in words, with its size.
        parameters: ``(total, trainable)`` of the trained model (before any LoRA merge).
        steps_trained: optimizer steps the run has completed (at the export, or at the end of training).
        stopped_early_at: the step early stopping ended training at, or None.
    """

    name: str
    title_config: TitleConfig
    options: dict[str, Any]
    command: list[str]
    train_records: int
    validation_records: int
    validation_source: str
    tokenizer: str
    parameters: tuple[int, int]
    steps_trained: int
    stopped_early_at: int | None = None
    tags: list[str] = field(default_factory=lambda: ["mt5", "summarization", "news-title", "chinese"])


def base_model(options: dict[str, Any]) -> str | None:
    """The pretrained model the export was fine-tuned from (None when trained from scratch)."""
    if options.get("rl_from"):
        return options["rl_from"]
    return None if options.get("config_name") else options.get("model_name_or_path")


def _yaml(value: Any) -> str:
    """A YAML scalar (JSON strings and numbers are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


def front_matter(facts: CardFacts) -> list[str]:
    """The YAML header: hub metadata and a ``model-index`` with the validation scores (F x100)."""
    o, tc = facts.options, facts.title_config
    peft = o.get("peft_method", "none")
    tags = facts.tags + ([peft.replace("_", "-")] if peft != "none" else [])
    lines = ["---", "language:", "- zh", "license: apache-2.0",
             f"library_name: {'peft' if tc.prompt_adapter else 'transformers'}", "pipeline_tag: summarization",
             "tags:", *(f"- {t}" for t in tags)]
    if base_model(o):
        lines.append(f"base_model: {_yaml(base_model(o))}")
    lines += ["metrics:", "- rouge", "model-index:", f"- name: {_yaml(facts.name)}", "  results:",
              "  - task:", "      type: summarization", "      name: News title generation",
              "    dataset:", "      type: json", f"      name: {_yaml(facts.validation_source)}", "    metrics:"]
    for key, label in SCORES:
        if f"eval/{key}" in tc.metrics:
            lines += [f"    - type: {key}", f"      name: {_yaml(f'{label} F x100 (tw_rouge, {tc.segmenter})')}",
                      f"      value: {round(tc.metrics[f'eval/{key}'], 4)}"]
    return lines + ["---"]


def description(facts: CardFacts) -> list[str]:
    o, (total, trainable) = facts.options, facts.parameters
    peft = o.get("peft_method", "none")
    start = (f"fine-tuned from `{base_model(o)}`" if base_model(o)
             else f"trained from scratch (architecture `{o.get('config_name')}`)")
    how = {"none": "all weights trained", "lora": "LoRA adapters trained and merged into the weights",
           "prompt_tuning": f"a soft prompt of {o.get('num_virtual_tokens')} virtual tokens trained (peft prompt "
                            "tuning) in front of frozen base weights; the prompt is in `prompt_adapter/`"}[peft]
    return ["## Model description", "",
            f"An mT5-architecture sequence-to-sequence model that writes a title for a Chinese news article, {start}; "
            f"{how}. Parameters: {total:,} in the trained model, {trainable:,} of them trained.", ""]


def training_data(facts: CardFacts) -> list[str]:
    o = facts.options
    cut = f" (the first {o['max_train_samples']:,} only)" if o.get("max_train_samples") else ""
    return ["## Training data", "",
            f"- training: `{o.get('train_file')}`, {facts.train_records:,} articles{cut}",
            f"- validation: {facts.validation_source}, {facts.validation_records:,} articles", ""]


def preprocessing(facts: CardFacts) -> list[str]:
    tc = facts.title_config
    return ["## Preprocessing", "",
            f"- source prefix: {_yaml(tc.source_prefix)}",
            f"- max_source_length: {tc.max_source_length} tokens (articles are truncated)",
            f"- max_target_length: {tc.max_target_length} tokens",
            f"- tokenizer: {facts.tokenizer}", ""]


def hyperparameters(facts: CardFacts) -> list[str]:
    o = facts.options
    names = HYPERPARAMETERS + ("peft_method",) + PEFT_HYPERPARAMETERS.get(o.get("peft_method", "none"), ())
    lines = ["## Training hyperparameters", "", "| option | value |", "| --- | --- |"]
    lines += [f"| {n} | {_yaml(o[n])} |" for n in names if n in o]
    ended = (f"; training stopped early at step {facts.stopped_early_at}" if facts.stopped_early_at is not None
             else "")
    return lines + ["", f"This export is the model of step {facts.title_config.step} (the best on validation); "
                        f"{facts.steps_trained} optimizer steps were run{ended}.", ""]


def decoding(facts: CardFacts) -> list[str]:
    tc = facts.title_config
    lines = ["## Decoding strategy", "",
             f"Preset **{tc.generation_preset}** (`configs/generation_presets.json`, saved in "
             f"`generation_config.json`): {tc.generation_preset_reason}.", ""]
    if tc.preset_scores:
        lines += ["| preset | ROUGE-1 | ROUGE-2 | ROUGE-L |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | " + " | ".join(f"{s.get(f'eval/{k}', float('nan')):.2f}" for k, _ in SCORES) + " |"
                  for name, s in tc.preset_scores.items()]
        lines.append("")
    return lines


def scores(facts: CardFacts) -> list[str]:
    tc = facts.title_config
    preset = tc.generation_preset if tc.preset_scores else tc.eval_preset
    lines = ["## Validation scores", "",
             f"tw_rouge F x100 with the `{tc.segmenter}` segmenter (the course grades with `ckip`), decoded with "
             f"{preset}, on {facts.validation_records:,} validation articles:", "",
             "| ROUGE-1 | ROUGE-2 | ROUGE-L |", "| ---: | ---: | ---: |",
             "| " + " | ".join(f"{tc.metrics.get(f'eval/{k}', float('nan')):.2f}" for k, _ in SCORES) + " |", ""]
    return lines


def usage(facts: CardFacts) -> list[str]:
    backends = ("with `--backend hf` only: CTranslate2 cannot represent a soft prompt"
                if facts.title_config.prompt_adapter else "`--backend ct2` decodes with CTranslate2, faster on CPU")
    return ["## How to use", "", "```bash",
            f"bash run.sh input.jsonl output.jsonl {facts.name}",
            f"python predict.py --model_dir {facts.name} --input_file input.jsonl --output_file output.jsonl",
            "```", "",
            f"Input: JSON lines with `id` and `maintext`; output: one `{{\"title\", \"id\"}}` line per article. "
            f"predict.py loads the export with `export.load_model`; {backends}.", ""]


def build_model_card(facts: CardFacts) -> str:
    """The card's Markdown text (front matter first)."""
    sections = [front_matter(facts), ["", f"# {facts.name}", ""], description(facts), training_data(facts),
                preprocessing(facts), hyperparameters(facts), decoding(facts), scores(facts), usage(facts),
                ["## The command that made it", "", "```bash",
                 "python train_decoder.py " + shlex.join(facts.command), "```"]]
    return "\n".join(line for section in sections for line in section) + "\n"

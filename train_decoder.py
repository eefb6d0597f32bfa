"""Fine-tune mT5 (or train an mT5-architecture model from scratch) to write Chinese news titles.

    accelerate launch train_decoder.py [PRESET.json] [--flag value ...]     # or: bash train.sh ...

One step-based loop (Accelerate; 1..N GPUs or CPU): teacher-forced cross-entropy, or with ``--rl_from``
the self-critical RL stage (``rl.py``). After each optimizer step: ``maybe_log``, ``maybe_evaluate``
(generation + tw_rouge; the best model by validation ROUGE is exported to ``OUTPUT_DIR/best/``) and
``maybe_save`` (``accelerator.save_state`` checkpoints that resume exactly). See ``parse_arg.py`` for
every option.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_io import DataError, atomic_write_text, read_jsonl, write_jsonl_atomic
from parse_arg import Args, ArgumentError, check_args, check_segmenter_data, parse_args, save_args

logger = logging.getLogger("train_decoder")

STATE_FILE = "training_state.json"


@dataclass
class TrainingState:
    """Runtime progress saved with every checkpoint (never written back into the config)."""

    completed_steps: int = 0  # optimizer steps
    epoch: int = 0
    batches_in_epoch: int = 0  # dataloader batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainingState":
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


# ----------------------------------------------------------------------------------------------------
# factories (tests swap in tiny versions)


def get_tokenizer_for_run(args: Args, train_records: list[dict], accelerator):
    """The run's tokenizer: the RL export's, the given one, the model's, or (from scratch without
    ``--tokenizer_name``) a sentencepiece unigram model trained on the training texts, saved to
    ``OUTPUT_DIR/tokenizer`` (reused when resuming)."""
    from modeling import get_tokenizer, train_sentencepiece_tokenizer

    m = args.model
    if args.rl.rl_from:
        return get_tokenizer(args.rl.rl_from)
    if m.tokenizer_name:
        return get_tokenizer(m.tokenizer_name)
    if not m.config_name:
        return get_tokenizer(m.model_name_or_path)
    tok_dir = Path(args.train.output_dir) / "tokenizer"
    reuse = args.train.resume_from_checkpoint and (tok_dir / "spiece.model").exists()
    if accelerator.is_main_process and not reuse:
        texts = [r[args.data.text_column] for r in train_records] + [r[args.data.summary_column] for r in train_records]
        logger.info("training a %d-piece sentencepiece tokenizer on %d texts", m.tokenizer_vocab_size, len(texts))
        train_sentencepiece_tokenizer(texts, tok_dir, vocab_size=m.tokenizer_vocab_size)
    accelerator.wait_for_everyone()
    return get_tokenizer(str(tok_dir))


def get_model_for_run(args: Args, tokenizer):
    """The model to train: the RL export, a random one from ``--config_name``, or a pretrained one;
    with freezing, LoRA and gradient checkpointing applied."""
    from modeling import get_model, round_up

    m = args.model
    if args.rl.rl_from:
        model = get_model(args.rl.rl_from)
    elif m.config_name:
        model = get_model(config_name=m.config_name, vocab_size=round_up(len(tokenizer)))
    else:
        model = get_model(m.model_name_or_path)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ArgumentError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                            f"{model.get_input_embeddings().weight.shape[0]}: use the model's own tokenizer")
    freeze_parts(model, m.freeze)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if m.use_lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=m.lora_r, lora_alpha=m.lora_alpha,
                                                 lora_dropout=m.lora_dropout, target_modules=m.lora_target_modules))
    return model


def freeze_parts(model, parts: list[str]) -> None:
    """Freeze ``encoder`` (its blocks and final norm), ``decoder`` (likewise) and/or ``embeddings``
    (the shared input embeddings; ``lm_head`` stays trainable when untied)."""
    for name, param in model.named_parameters():
        is_embedding = name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
        if ("embeddings" in parts and is_embedding) or any(
                part in parts and name.startswith(part + ".") and not is_embedding for part in ("encoder", "decoder")):
            param.requires_grad_(False)


def get_optimizer(model, args: Args):
    """Adafactor with the T5 recipe (fixed lr: ``scale_parameter=False, relative_step=False,
    warmup_init=False``; Shazeer & Stern 2018) or AdamW without decay on biases and LayerNorm weights."""
    t = args.train
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=t.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)
    fused = t.mixed_precision != "fp16" and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                             fused=fused)


# ----------------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Holds the run's objects; ``train()`` is the loop. Built by :func:`main` (or by tests)."""

    def __init__(self, args: Args, accelerator, model, tokenizer, optimizer, scheduler, train_loader,
                 train_records, eval_records, max_train_steps: int):
        from generation import load_presets, resolve_generation_config

        self.args, self.accelerator = args, accelerator
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.scheduler, self.train_loader = optimizer, scheduler, train_loader
        self.train_records, self.eval_records = train_records, eval_records
        self.max_train_steps = max_train_steps
        self.output_dir = Path(args.train.output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.state = TrainingState()
        self.presets = load_presets(args.eval.presets_file)
        base = accelerator.unwrap_model(model).generation_config
        max_new = args.eval.eval_max_new_tokens or args.data.max_target_length
        self.eval_generation_config = resolve_generation_config(
            base, args.eval.eval_preset, {"max_new_tokens": max_new}, self.presets)
        self.rl = None
        if args.rl.rl_from:
            self.rl = self._build_rl(base, max_new)
        self._window = {"loss": 0.0, "micro": 0, "samples": 0, "tokens": 0, "t0": time.time(), "rl": []}
        self._last_eval_step: int | None = None
        self._last_save_step: int | None = None

    # ---- losses
    def _build_rl(self, base, max_new):
        from generation import resolve_generation_config
        from rl import make_rouge_reward

        weights = dict(zip(("rouge-1", "rouge-2", "rouge-l"), self.args.rl.rl_reward_weights))
        return {
            "reward_fn": make_rouge_reward(segmenter=self.args.eval.segmenter, weights=weights),
            "rollout": resolve_generation_config(base, self.args.rl.rl_rollout_preset,
                                                 {"max_new_tokens": max_new}, self.presets),
            "baseline": resolve_generation_config(base, self.args.rl.rl_baseline_preset,
                                                  {"max_new_tokens": max_new}, self.presets),
        }

    def supervised_loss(self, batch) -> torch.Tensor:
        """Teacher-forced cross-entropy over non-padding title tokens (optionally label-smoothed)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        if self.args.train.label_smoothing > 0:
            logits = out.logits.float()
            return F.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1), ignore_index=-100,
                                   label_smoothing=self.args.train.label_smoothing)
        return out.loss

    def compute_loss(self, batch) -> torch.Tensor:
        if self.rl is None:
            return self.supervised_loss(batch)
        from rl import mixed_objective, scst_step

        refs = [self.train_records[i][self.args.data.summary_column] for i in batch["example_index"].tolist()]
        gamma = self.args.rl.rl_gamma
        rl_loss, stats = scst_step(
            self.model, batch, self.tokenizer, self.rl["reward_fn"], references=refs,
            num_samples=self.args.rl.rl_num_samples, rollout_config=self.rl["rollout"],
            baseline_config=self.rl["baseline"], generate_model=self.accelerator.unwrap_model(self.model))
        self._window["rl"].append(stats)
        ml_loss = self.supervised_loss(batch) if gamma < 1 else None  # no teacher-forced pass for pure RL
        return mixed_objective(rl_loss, ml_loss, gamma)

    # ---- main loop
    def train(self, stop_after_steps: int | None = None) -> TrainingState:
        """Run until ``max_train_steps`` (or ``stop_after_steps``, used by tests to simulate a stop)."""
        from tqdm.auto import tqdm

        acc, t, state = self.accelerator, self.args.train, self.state
        bar = tqdm(total=self.max_train_steps, initial=state.completed_steps, disable=not acc.is_local_main_process,
                   desc="train", unit="step")
        start = time.time() - state.elapsed_s
        if t.eval_on_start or self.rl is not None:
            if state.completed_steps == 0:
                self.evaluate()  # the supervised score, before the first (RL) step
        self.model.train()
        while state.completed_steps < self.max_train_steps:
            # the prepared loader re-seeds the sampler with its own epoch counter at each pass: set it (resume)
            self.train_loader.set_epoch(state.epoch)
            loader = self.train_loader
            if state.batches_in_epoch:
                loader = acc.skip_first_batches(self.train_loader, state.batches_in_epoch)
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self.compute_loss(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and t.max_grad_norm > 0:
                        self._window["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                state.batches_in_epoch += 1
                self._window["loss"] += loss.detach().float().item()
                self._window["micro"] += 1
                self._window["samples"] += batch["input_ids"].size(0)
                self._window["tokens"] += int(batch["attention_mask"].sum())
                if not acc.sync_gradients:
                    continue
                state.completed_steps += 1
                state.elapsed_s = time.time() - start
                bar.update(1)
                self.maybe_log()
                if t.eval_steps and state.completed_steps % t.eval_steps == 0:
                    self.evaluate()
                if t.save_steps and state.completed_steps % t.save_steps == 0:
                    self.save_checkpoint()
                if state.completed_steps >= self.max_train_steps or state.completed_steps == stop_after_steps:
                    break
            else:  # epoch finished
                state.epoch += 1
                state.batches_in_epoch = 0
                if t.eval_every_epoch and self._last_eval_step != state.completed_steps:
                    self.evaluate()
                continue
            break
        bar.close()
        state.elapsed_s = time.time() - start
        if state.completed_steps != stop_after_steps:  # finished (not a simulated stop)
            if self._last_eval_step != state.completed_steps:
                self.evaluate()  # always score the final model
            if t.save_steps and self._last_save_step != state.completed_steps:
                self.save_checkpoint()
        acc.wait_for_everyone()
        return state

    # ---- after-step helpers
    def maybe_log(self) -> None:
        w, state = self._window, self.state
        if state.completed_steps % self.args.train.logging_steps and state.completed_steps != self.max_train_steps:
            return
        dt = max(time.time() - w["t0"], 1e-9)
        row: dict[str, Any] = {
            "step": state.completed_steps, "epoch": state.epoch, "elapsed_s": round(state.elapsed_s, 3),
            "train/loss": w["loss"] / max(w["micro"], 1), "train/lr": self.scheduler.get_last_lr()[0],
            "train/samples_per_s": w["samples"] / dt, "train/source_tokens_per_s": w["tokens"] / dt,
        }
        if "grad_norm" in w:
            row["train/grad_norm"] = w["grad_norm"]
        if w["rl"]:
            for key in w["rl"][0]:  # scst_step's statistics, already named rl/...
                row[key if "/" in key else f"rl/{key}"] = sum(s[key] for s in w["rl"]) / len(w["rl"])
        self.log(row)
        self._window = {"loss": 0.0, "micro": 0, "samples": 0, "tokens": 0, "t0": time.time(), "rl": []}

    def log(self, row: dict[str, Any]) -> None:
        """Append a metrics row to ``metrics.jsonl`` (main process) and to the trackers."""
        acc = self.accelerator
        if acc.is_main_process:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            logger.info("%s", shown)
        if self.args.train.report_to:
            acc.log({k: v for k, v in row.items() if "/" in k}, step=row["step"])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Generate titles for the validation articles (split across processes), score them with
        tw_rouge (F x100), log, and export the model to ``best/`` when it beats the best so far."""
        from accelerate.utils import broadcast_object_list, gather_object

        from generation import generate_titles
        from tw_rouge import get_rouge

        acc, d = self.accelerator, self.args.data
        t0 = time.time()
        texts = [r[d.text_column] for r in self.eval_records]
        with acc.split_between_processes(list(range(len(texts)))) as shard:
            local = generate_titles(acc.unwrap_model(self.model), self.tokenizer, [texts[i] for i in shard],
                                    self.eval_generation_config, batch_size=self.args.train.per_device_eval_batch_size,
                                    max_source_length=d.max_source_length, source_prefix=d.source_prefix,
                                    device=acc.device, bf16=self.args.train.mixed_precision == "bf16")
            pairs = list(zip(shard, local))
        pairs = sorted(gather_object(pairs))
        preds = [p for _, p in pairs]
        result: list[Any] = [None]
        if acc.is_main_process:
            refs = [r[d.summary_column] for r in self.eval_records]
            scores = get_rouge(preds, refs, segmenter=self.args.eval.segmenter)
            metrics = {f"eval/{m}": 100 * scores[m]["f"] for m in ("rouge-1", "rouge-2", "rouge-l")}
            metrics["eval/rouge-sum"] = sum(metrics.values())
            metrics["eval/gen_len"] = sum(len(p) for p in preds) / max(len(preds), 1)
            metrics["eval/seconds"] = time.time() - t0
            result = [metrics]
        metrics = broadcast_object_list(result)[0]
        self._last_eval_step = self.state.completed_steps
        self.log({"step": self.state.completed_steps, "epoch": self.state.epoch, **metrics})
        key = f"eval/{self.args.train.metric_for_best_model}"
        if self.state.best_metric is None or metrics[key] > self.state.best_metric:
            self.state.best_metric, self.state.best_step = metrics[key], self.state.completed_steps
            self.export_best(preds, metrics)
        if acc.is_main_process:
            write_jsonl_atomic(self.output_dir / "eval_predictions.jsonl",
                               [{"title": p, "id": r["id"]} for p, r in zip(preds, self.eval_records)])
            try:
                from plotting import plot_learning_curves

                plot_learning_curves(self.metrics_path, self.output_dir / "learning_curve.png")
            except Exception as err:  # a plot must never stop training
                logger.warning("could not draw the learning curve: %s", err)
        self.model.train()
        return metrics

    def export_best(self, preds: list[str], metrics: dict[str, float]) -> None:
        """``save_pretrained`` the model, tokenizer, ``generation_config.json`` and ``title_config.json``
        to ``best/`` atomically (built in a temp dir, then swapped in). LoRA adapters are merged."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            if self.args.model.use_lora:
                import copy

                model = copy.deepcopy(model).merge_and_unload()
            final, tmp = self.output_dir / "best", self.output_dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.generation_config = self.eval_generation_config
            model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            d = self.args.data
            title_config = {"max_source_length": d.max_source_length, "max_target_length": d.max_target_length,
                            "source_prefix": d.source_prefix, "text_column": d.text_column,
                            "per_device_eval_batch_size": self.args.train.per_device_eval_batch_size,
                            "eval_preset": self.args.eval.eval_preset, "step": self.state.completed_steps,
                            "metrics": metrics}
            atomic_write_text(tmp / "title_config.json", json.dumps(title_config, indent=2, ensure_ascii=False))
            write_jsonl_atomic(tmp / "eval_predictions.jsonl",
                               [{"title": p, "id": r["id"]} for p, r in zip(preds, self.eval_records)])
            _swap_dir(tmp, final)
            logger.info("new best %s = %.3f at step %d -> %s", self.args.train.metric_for_best_model,
                        self.state.best_metric, self.state.completed_steps, final)
        acc.wait_for_everyone()

    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` (model, optimizer, scheduler, RNG) plus ``training_state.json`` to
        ``checkpoints/step_N`` (temp dir + rename), keeping at most ``save_total_limit`` checkpoints."""
        acc = self.accelerator
        self._last_save_step = self.state.completed_steps
        ckpt_root = self.output_dir / "checkpoints"
        final = ckpt_root / f"step_{self.state.completed_steps}"
        tmp = ckpt_root / f".step_{self.state.completed_steps}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            ckpt_root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            self.state.save(tmp / STATE_FILE)
            _swap_dir(tmp, final)
            for old in list_checkpoints(self.output_dir)[: -self.args.train.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self, checkpoint: str) -> None:
        """Load a checkpoint (``latest`` = newest under ``OUTPUT_DIR/checkpoints``) exactly."""
        path = latest_checkpoint(self.output_dir) if checkpoint == "latest" else Path(checkpoint)
        if path is None:
            logger.info("no checkpoint under %s/checkpoints: starting from scratch", self.output_dir)
            return
        if not (path / STATE_FILE).is_file():
            raise ArgumentError(f"--resume_from_checkpoint {path}: not a checkpoint (no {STATE_FILE})")
        self.accelerator.load_state(str(path))
        self.state = TrainingState.load(path / STATE_FILE)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.completed_steps,
                    self.state.epoch, self.state.batches_in_epoch)


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp``: the old directory is moved aside first and removed last."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------


def build_trainer(args: Args) -> Trainer:
    """Set up everything (accelerator, data, tokenizer, model, optimizer, scheduler) from ``args``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from modeling import count_parameters
    from seq2seq_data import IndexedSeq2SeqCollator, get_train_dataloader, tokenize_pairs

    t, d = args.train, args.data
    accelerator = Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                              mixed_precision=t.mixed_precision,
                              log_with=t.report_to.split(",") if t.report_to else None, project_dir=t.output_dir)
    set_seed(t.seed)
    if accelerator.device.type == "cpu":
        torch.set_flush_denormal(True)  # subnormal floats take a slow path on CPU (10x slower steps seen)
    output_dir = Path(t.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_args(args, output_dir / "args.json")
    train_records = read_jsonl(d.train_file, text_column=d.text_column, summary_column=d.summary_column)
    eval_records = read_jsonl(d.validation_file, text_column=d.text_column, summary_column=d.summary_column,
                              allow_empty_text=True)
    train_records = train_records[: d.max_train_samples] if d.max_train_samples else train_records
    eval_records = eval_records[: d.max_eval_samples] if d.max_eval_samples else eval_records

    tokenizer = get_tokenizer_for_run(args, train_records, accelerator)
    model = get_model_for_run(args, tokenizer)
    dataset = tokenize_pairs(train_records, tokenizer, text_column=d.text_column, summary_column=d.summary_column,
                             source_prefix=d.source_prefix, max_source_length=d.max_source_length,
                             max_target_length=d.max_target_length)
    collator = IndexedSeq2SeqCollator(tokenizer, pad_to_multiple_of=8 if t.mixed_precision != "no" else None)
    train_loader = get_train_dataloader(dataset, collator, t.per_device_train_batch_size, seed=t.seed,
                                        group_by_length=t.group_by_length, num_workers=t.dataloader_num_workers)
    optimizer = get_optimizer(model, args)

    batches_per_process = math.ceil(len(train_loader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_process / t.gradient_accumulation_steps)
    max_train_steps = t.max_train_steps or math.ceil(t.num_train_epochs * steps_per_epoch)
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * max_train_steps)
    # the prepared scheduler steps once per process per optimizer step (Accelerate convention)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup * accelerator.num_processes,
                              num_training_steps=max_train_steps * accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    trainer = Trainer(args, accelerator, model, tokenizer, optimizer, scheduler, train_loader, train_records,
                      eval_records, max_train_steps)
    total, trainable = count_parameters(accelerator.unwrap_model(model))
    effective_batch = t.per_device_train_batch_size * accelerator.num_processes * t.gradient_accumulation_steps
    logger.info("***** %s *****", "RL stage (self-critical)" if args.rl.rl_from else "supervised training")
    logger.info("  parameters: %s total, %s trainable", f"{total:,}", f"{trainable:,}")
    logger.info("  examples: %d train, %d validation; %d steps/epoch", len(train_records), len(eval_records),
                steps_per_epoch)
    logger.info("  effective batch %d = %d per device x %d processes x %d accumulation", effective_batch,
                t.per_device_train_batch_size, accelerator.num_processes, t.gradient_accumulation_steps)
    logger.info("  total optimizer steps %d (warmup %d), device %s, precision %s", max_train_steps, warmup,
                accelerator.device, t.mixed_precision)
    logger.info("  config: %s", json.dumps(args.to_dict(), ensure_ascii=False))
    example = dataset[0]
    logger.info("  example source: %s", tokenizer.decode(example["input_ids"]))
    logger.info("  example target: %s", tokenizer.decode(example["labels"]))
    if t.report_to:
        accelerator.init_trackers("mt5-title", config={f"{g}.{k}": (v if isinstance(v, (int, float, str, bool))
                                                                   else str(v))
                                                       for g, vals in args.to_dict().items() for k, v in vals.items()})
    if t.resume_from_checkpoint:
        trainer.resume(t.resume_from_checkpoint)
    return trainer


def main(argv: list[str] | None = None, stop_after_steps: int | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        check_args(args)
        check_segmenter_data(args)
        trainer = build_trainer(args)
    except (ArgumentError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = trainer.train(stop_after_steps=stop_after_steps)
    if trainer.args.train.report_to:
        trainer.accelerator.end_training()
    logger.info("done: %d steps in %.1f s; best %s = %s at step %s -> %s", state.completed_steps, state.elapsed_s,
                args.train.metric_for_best_model, state.best_metric, state.best_step,
                Path(args.train.output_dir) / "best")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune mT5 (or train an mT5-architecture model from scratch) to write Chinese news titles.

    python train_decoder.py [PRESET.json] [--flag value ...]     # or: bash train.sh ...; accelerate launch ...

One step-based loop (Accelerate; 1..N GPUs or CPU) in :class:`Trainer`: teacher-forced cross-entropy, or
with ``--rl_from`` the self-critical RL stage (``rl.py``). After each optimizer step the loop calls
``maybe_log``, ``maybe_evaluate`` and ``maybe_save``, each of which decides for itself whether it is due:
evaluation generates titles for the validation set and scores them with tw_rouge, and the best model by
validation ROUGE is exported to ``OUTPUT_DIR/best/`` (``export.write_export``); checkpoints
(``export.save_checkpoint``) resume exactly. :func:`build_trainer` wires everything from the arguments
(``parse_arg.py``) through swappable :class:`Factories` for the tokenizer, the model and the collator.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from data_io import DataError, atomic_write_text, read_jsonl, split_by_id, write_jsonl_atomic
from export import (
    MODEL_CARD_FILE,
    PROMPT_ADAPTER_DIR,
    ExportError,
    TitleConfig,
    TrainingState,
    checkpoint_hyperparameters,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
    write_export,
)
from generation import generate_titles, load_presets, resolve_generation_config
from model_card import CardFacts, build_model_card
from modeling import (
    VocabularySizeError,
    count_parameters,
    get_model,
    get_tokenizer,
    round_up,
    train_sentencepiece_tokenizer,
)
from parse_arg import (
    RUN_DIRS,
    RUN_FILES,
    Args,
    ArgumentError,
    check_args,
    check_segmenter_data,
    parse_args,
    resume_differences,
    save_args,
    selection_presets,
)
from plotting import plot_learning_curves
from pretraining import CorruptedTexts
from prune_vocab import PRUNE_INFO, PruneError, prune_export, read_corpus
from rewards import RewardFn, make_reward
from rl import scst_step
from rl_math import mixed_objective
from seq2seq_data import IndexedSeq2SeqCollator, get_train_dataloader, tokenize_pairs
from text_stats import title_statistics
from tw_rouge import get_rouge, get_segmenter

logger = logging.getLogger("train_decoder")
# --rl_degeneration_tolerance compares these evaluation statistics with the run's start
DRIFT_STATISTICS = ("eval/gen_len", "eval/repeat_3gram_frac")


# ----------------------------------------------------------------------------------------------------
# factories (tests and benchmarks swap in their own through Factories)


PRUNED_MODEL_DIR = "pruned_model"


def pretrained_source(args: Args) -> str:
    """Where the pretrained model and tokenizer are loaded from: ``--model_name_or_path``, or with
    ``--prune_vocabulary`` its pruned copy in ``OUTPUT_DIR/pruned_model`` (see :func:`prune_vocabulary`)."""
    if args.model.prune_vocabulary:
        return str(Path(args.train.output_dir) / PRUNED_MODEL_DIR)
    return args.model.model_name_or_path


def prune_vocabulary(args: Args, accelerator: Accelerator) -> None:
    """``--prune_vocabulary``: write ``OUTPUT_DIR/pruned_model``, the pretrained model cut to the pieces the
    training and validation texts use (``prune_vocab.prune_export``: segmentation of every corpus text
    checked unchanged), once; a resumed run reuses it.

    Raises:
        ArgumentError: the model or corpus cannot be pruned (prune_vocab's message).
    """
    out = Path(pretrained_source(args))
    if accelerator.is_main_process and not (out / PRUNE_INFO).is_file():
        m, d = args.model, args.data
        try:
            info = prune_export(m.model_name_or_path, [f for f in (d.train_file, d.validation_file) if f], out,
                                text_columns=(d.text_column, d.summary_column), keep_top=m.prune_keep_top,
                                min_count=m.prune_min_count, overwrite=True)
        except (PruneError, DataError) as err:
            raise ArgumentError(f"--prune_vocabulary: {err}") from err
        logger.info("--prune_vocabulary: kept %s of %s pieces (%s -> %s parameters) -> %s", f"{info.kept_pieces:,}",
                    f"{info.original_pieces:,}", f"{info.parameters_before:,}", f"{info.parameters_after:,}", out)
    accelerator.wait_for_everyone()


def get_tokenizer_for_run(args: Args, texts: list[str], accelerator: Accelerator):
    """The run's tokenizer: the RL export's, the given one, the model's, or (from scratch without
    ``--tokenizer_name``) a sentencepiece unigram model trained on ``texts`` (the training articles and
    titles, or the pretraining corpus), saved to ``OUTPUT_DIR/tokenizer`` (reused when resuming)."""
    m = args.model
    if args.rl.rl_from:
        return get_tokenizer(args.rl.rl_from)
    if m.tokenizer_name:
        return get_tokenizer(m.tokenizer_name)
    if not m.config_name:
        return get_tokenizer(pretrained_source(args))
    tok_dir = Path(args.train.output_dir) / "tokenizer"
    reuse = args.train.resume_from_checkpoint and (tok_dir / "spiece.model").exists()
    if accelerator.is_main_process and not reuse:
        logger.info("training a %d-piece sentencepiece tokenizer on %d texts", m.tokenizer_vocab_size, len(texts))
        try:
            train_sentencepiece_tokenizer(texts, tok_dir, vocab_size=m.tokenizer_vocab_size)
        except VocabularySizeError as err:
            raise ArgumentError(f"--tokenizer_vocab_size {m.tokenizer_vocab_size}: {err}") from err
    accelerator.wait_for_everyone()
    return get_tokenizer(str(tok_dir))


def get_model_for_run(args: Args, tokenizer) -> torch.nn.Module:
    """The model to train: the RL export, a random one from ``--config_name``, or a pretrained one;
    with freezing, gradient checkpointing and ``--peft_method`` (LoRA or prompt tuning) applied.

    Raises:
        ArgumentError: the tokenizer has more tokens than the model has embedding rows.
    """
    m = args.model
    if args.rl.rl_from:
        model = get_model(args.rl.rl_from)
    elif m.config_name:
        model = get_model(config_name=m.config_name, vocab_size=round_up(len(tokenizer)))
    else:
        model = get_model(pretrained_source(args))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ArgumentError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {rows}: "
                            "use the model's own tokenizer")
    freeze_parts(model, m.freeze)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if m.peft != "none":
        from peft import get_peft_model  # optional dependency, loaded when asked for

        model = get_peft_model(model, peft_config(args, tokenizer))
    return model


def peft_config(args: Args, tokenizer):
    """peft's ``LoraConfig`` or ``PromptTuningConfig`` (task SEQ_2_SEQ_LM) for ``--peft_method``. The soft
    prompt goes before the encoder's input only (``num_transformer_submodules=1``: peft's seq2seq prompt
    tuning never feeds a decoder prompt, whose rows would be trained for nothing); text initialisation
    tokenizes ``--prompt_tuning_init_text`` with the run's tokenizer (peft loads it by its path)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    m = args.model
    if m.peft == "lora":
        return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=m.lora_r, lora_alpha=m.lora_alpha,
                          lora_dropout=m.lora_dropout, target_modules=m.lora_target_modules)
    text = m.prompt_tuning_init == "text"
    return PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=m.num_virtual_tokens,
                              num_transformer_submodules=1,
                              prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
                              prompt_tuning_init_text=m.prompt_tuning_init_text if text else None,
                              tokenizer_name_or_path=tokenizer.name_or_path if text else None)


def get_collator(args: Args, tokenizer) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """``DataCollatorForSeq2Seq`` with example indices; pads to a multiple of 8 under mixed precision."""
    return IndexedSeq2SeqCollator(tokenizer, pad_to_multiple_of=8 if args.train.mixed_precision != "no" else None)


@dataclass
class Factories:
    """Constructors :func:`build_trainer` calls; tests and benchmarks pass their own (e.g. a collator that
    records every batch, a model with hooks)."""

    tokenizer: Callable[[Args, list[str], Accelerator], Any] = get_tokenizer_for_run
    model: Callable[[Args, Any], torch.nn.Module] = get_model_for_run
    collator: Callable[[Args, Any], Callable] = get_collator


def freeze_parts(model: torch.nn.Module, parts: list[str]) -> None:
    """Freeze ``encoder`` (its blocks and final norm), ``decoder`` (likewise) and/or ``embeddings``
    (the shared input embeddings; ``lm_head`` stays trainable when untied)."""
    for name, param in model.named_parameters():
        is_embedding = name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
        if ("embeddings" in parts and is_embedding) or any(
                part in parts and name.startswith(part + ".") and not is_embedding for part in ("encoder", "decoder")):
            param.requires_grad_(False)


def get_optimizer(model: torch.nn.Module, args: Args) -> torch.optim.Optimizer:
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
# small state containers


@dataclass
class LogWindow:
    """What accumulates between two log rows. Losses and token counts stay tensors on the device (adding
    them needs no host sync); :meth:`summary` converts them once per log row."""

    started: float = field(default_factory=time.time)
    micro_batches: int = 0
    samples: int = 0
    loss_sum: torch.Tensor | float = 0.0
    source_tokens: torch.Tensor | int = 0
    grad_norm: torch.Tensor | None = None  # of the last optimizer step
    rl_stats: list[dict[str, float]] = field(default_factory=list)
    first_nonfinite_step: torch.Tensor | None = None  # -1, or the first optimizer step with a non-finite loss
    update_s: float = 0.0  # RL stage: seconds in backward + optimizer step (timed only there)

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor], step: int) -> None:
        """Accumulate one micro-batch of optimizer step ``step`` (no host sync)."""
        loss = loss.detach().float()
        self.micro_batches += 1
        self.samples += batch["input_ids"].shape[0]
        self.loss_sum = self.loss_sum + loss
        self.source_tokens = self.source_tokens + batch["attention_mask"].sum()
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        unseen = ~torch.isfinite(loss) & (self.first_nonfinite_step < 0)
        self.first_nonfinite_step = torch.where(unseen, step, self.first_nonfinite_step)

    def nonfinite_step(self) -> int | None:
        """The first optimizer step of the window whose loss was inf/NaN, or None (a host sync)."""
        step = -1 if self.first_nonfinite_step is None else int(self.first_nonfinite_step)
        return step if step >= 0 else None

    def summary(self) -> dict[str, float]:
        """``train/*`` (loss per micro-batch, samples/s, non-padding source tokens/s, grad norm) and the
        mean of each ``rl/*`` statistic."""
        seconds = max(time.time() - self.started, 1e-9)
        # note: float() of a device tensor is a host-device sync point: once per log row, not per batch
        row = {"train/loss": float(self.loss_sum) / max(self.micro_batches, 1),
               "train/samples_per_s": self.samples / seconds,
               "train/source_tokens_per_s": float(self.source_tokens) / seconds}
        if self.grad_norm is not None:
            row["train/grad_norm"] = float(self.grad_norm)
        for key in self.rl_stats[0] if self.rl_stats else ():
            row[key] = sum(s[key] for s in self.rl_stats) / len(self.rl_stats)
        if self.rl_stats:
            row["rl/time_update_s"] = self.update_s / len(self.rl_stats)
        return row


@dataclass
class RLSetup:
    """What the self-critical stage needs besides the policy: the reward, the two decoding configs and, for
    the KL anchor, the frozen reference model."""

    reward_fn: RewardFn
    rollout_config: Any  # GenerationConfig that samples (--rl_rollout_preset)
    baseline_config: Any  # GenerationConfig of the greedy baseline (--rl_baseline_preset)
    reference_model: torch.nn.Module | None = None  # the --rl_from export, frozen, on the policy's device


class NonFiniteLossError(RuntimeError):
    """The training loss became inf or NaN; training stops before such weights are evaluated or saved."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after an optimizer step; ``checkpoint`` resumes it."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class StopSignals:
    """While active, SIGTERM and SIGINT (SLURM preemption, Colab, Ctrl-C) only ask the loop to stop: it
    finishes the optimizer step under way, saves a checkpoint and raises :class:`TrainingInterrupted`. A
    second signal of the same kind acts at once (the previous handler is back)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (a notebook worker, a test runner thread): leave them alone
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        logger.warning("received %s: stopping after the current optimizer step, with a checkpoint",
                       signal.Signals(signum).name)


def format_row(row: dict[str, Any]) -> str:
    """A metrics row for the console: floats with 4 significant digits (5e-05, not 0.0001)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


# ----------------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Holds the run's objects; :meth:`train` is the loop. Built by :func:`build_trainer` (or by tests)."""

    def __init__(self, args: Args, accelerator: Accelerator, model, tokenizer, optimizer, scheduler, train_loader,
                 train_records: list[dict], eval_records: list[dict], max_train_steps: int):
        self.args, self.accelerator = args, accelerator
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.scheduler, self.train_loader = optimizer, scheduler, train_loader
        self.train_records, self.eval_records = train_records, eval_records
        self.max_train_steps = self.stop_at = max_train_steps
        self.output_dir = Path(args.train.output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.state = TrainingState()
        self.window = LogWindow()
        self.segmenter = get_segmenter(args.eval.segmenter)
        self.presets = load_presets(args.eval.presets_file)
        self.eval_generation_config = self.generation_config(args.eval.eval_preset)
        self.rl = self.build_rl_setup() if args.rl.rl_from and not args.rl.rl_control else None
        self.last_eval_step: int | None = None
        self.last_save_step: int | None = None
        self.run_started = time.time()
        self.bar = None
        self.stop_signals: StopSignals | None = None  # set by main() while it trains
        self.eval_dataset: CorruptedTexts | None = None  # a pretraining objective's validation data

    def unwrapped_model(self):
        """The model without Accelerate's wrappers, and without torch.compile's (``--torch_compile``):
        generation, export and counting use the plain module, which shares the compiled one's weights."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def generation_config(self, preset: str):
        """The preset's ``GenerationConfig`` over the model's special-token ids, ``max_new_tokens`` = the
        evaluation limit."""
        max_new = self.args.eval.eval_max_new_tokens or self.args.data.max_target_length
        base = self.unwrapped_model().generation_config
        return resolve_generation_config(base, preset, {"max_new_tokens": max_new}, self.presets)

    def build_rl_setup(self) -> RLSetup:
        r = self.args.rl
        weights = dict(zip(("rouge-1", "rouge-2", "rouge-l"), r.rl_reward_weights))
        reference = None
        if r.rl_kl_coef > 0:  # a frozen copy of the starting point; never prepared, never optimised
            reference = get_model(r.rl_from).to(self.accelerator.device).eval().requires_grad_(False)
        return RLSetup(reward_fn=make_reward(r.rl_reward, segmenter=self.segmenter, weights=weights,
                                             length_penalty=r.rl_length_penalty,
                                             repetition_penalty=r.rl_repetition_penalty),
                       rollout_config=self.generation_config(r.rl_rollout_preset),
                       baseline_config=self.generation_config(r.rl_baseline_preset), reference_model=reference)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train_loader)

    def epoch_progress(self) -> float:
        """Epochs completed, with the fraction of the current one (3.0 after three full passes)."""
        return round(self.state.epoch + self.state.batches_in_epoch / max(self.batches_per_epoch, 1), 4)

    # ---- losses
    def supervised_loss(self, batch) -> torch.Tensor:
        """Teacher-forced cross-entropy over non-padding title tokens (optionally label-smoothed)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        if self.args.train.label_smoothing > 0:
            logits = out.logits.float()
            return F.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1), ignore_index=-100,
                                   label_smoothing=self.args.train.label_smoothing)
        return out.loss

    def compute_loss(self, batch) -> torch.Tensor:
        """The supervised loss, or in the RL stage ``gamma * L_rl + (1 - gamma) * L_ml``."""
        if self.rl is None:
            return self.supervised_loss(batch)
        d, r = self.args.data, self.args.rl
        records = [self.train_records[i] for i in batch["example_index"].tolist()]
        step = scst_step(
            self.model, batch, self.tokenizer, self.rl.reward_fn, sources=[x[d.text_column] for x in records],
            references=[x[d.summary_column] for x in records], num_samples=r.rl_num_samples,
            rollout_config=self.rl.rollout_config, baseline_config=self.rl.baseline_config,
            generate_model=self.unwrapped_model(), reference_model=self.rl.reference_model,
            baseline=r.rl_baseline, normalize=r.rl_normalize)
        self.window.rl_stats.append(step.stats)
        ml_loss = self.supervised_loss(batch) if r.rl_gamma < 1 else None  # no teacher-forced pass for pure RL
        return mixed_objective(step.loss, ml_loss, r.rl_gamma, kl=step.kl, kl_coef=r.rl_kl_coef)

    # ---- main loop
    def train(self, stop_after_steps: int | None = None) -> TrainingState:
        """Run until ``max_train_steps``, or stop after ``stop_after_steps`` (tests and benchmarks simulate
        an interruption with it: no final evaluation or checkpoint then)."""
        self.stop_at = min(self.max_train_steps, stop_after_steps if stop_after_steps is not None else math.inf)
        self.bar = tqdm(total=self.max_train_steps, initial=self.state.completed_steps, unit="step", desc="train",
                        disable=not self.accelerator.is_local_main_process)
        self.run_started = time.time() - self.state.elapsed_s
        if self.state.completed_steps == 0 and (self.args.train.eval_on_start or self.args.rl.rl_from):
            self.evaluate()  # the starting score (RL and its control: the supervised model's), before step 1
        self.maybe_stop_early()  # a run resumed from the checkpoint early stopping left has nothing more to do
        self.model.train()
        while self.state.completed_steps < self.stop_at:
            self.run_epoch()
        self.bar.close()
        if self.state.completed_steps != stop_after_steps:
            self.finish()
        self.accelerator.wait_for_everyone()
        return self.state

    def run_epoch(self) -> None:
        """One pass over the training batches (the rest of one, after a resume), or until ``stop_at``."""
        self.train_loader.set_epoch(self.state.epoch)  # the sampler's order depends on (seed, epoch) only
        if hasattr(self.train_loader.dataset, "set_epoch"):  # the pretraining corruptions too
            self.train_loader.dataset.set_epoch(self.state.epoch)
        batches = self.train_loader
        if self.state.batches_in_epoch:
            batches = self.accelerator.skip_first_batches(self.train_loader, self.state.batches_in_epoch)
        for batch in batches:
            self.micro_step(batch)
            if self.accelerator.sync_gradients:
                self.after_optimizer_step()
                if self.state.completed_steps >= self.stop_at:
                    break
        if self.state.batches_in_epoch >= self.batches_per_epoch:
            self.end_epoch()

    def micro_step(self, batch) -> None:
        """Forward and backward of one micro-batch; the optimizer steps when gradients are synchronised."""
        acc, t = self.accelerator, self.args.train
        with acc.accumulate(self.model):
            loss = self.compute_loss(batch)
            started = time.perf_counter()
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm > 0:
                self.window.grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            if self.rl is not None:  # the RL stage reports where its time goes (it syncs anyway)
                if acc.device.type == "cuda":
                    torch.cuda.synchronize(acc.device)
                self.window.update_s += time.perf_counter() - started
        self.state.batches_in_epoch += 1
        self.window.add(loss, batch, self.state.completed_steps + 1)

    def after_optimizer_step(self) -> None:
        self.state.completed_steps += 1
        self.state.elapsed_s = time.time() - self.run_started
        self.bar.update(1)
        self.maybe_log()
        self.maybe_evaluate()
        self.maybe_save()
        self.maybe_stop()

    def end_epoch(self) -> None:
        self.state.epoch += 1
        self.state.batches_in_epoch = 0
        self.maybe_evaluate(epoch_end=True)
        self.maybe_stop_early()

    def finish(self) -> None:
        """Always score the final model, and leave a checkpoint of it (when checkpoints are on)."""
        self.check_finite()
        if self.last_eval_step != self.state.completed_steps and self.state.stopped_early_at is None:
            self.evaluate()
        if self.args.train.save_steps and self.last_save_step != self.state.completed_steps:
            self.save_checkpoint()

    def check_finite(self) -> None:
        """Stop with :class:`NonFiniteLossError` if a loss of the current window was inf/NaN (called before
        logging, evaluating or saving, so that such weights are never exported or checkpointed)."""
        step = self.window.nonfinite_step()
        if step is None:
            return
        t = self.args.train
        raise NonFiniteLossError(
            f"the training loss became inf or NaN at optimizer step {step}; training stopped before those weights "
            f"were evaluated or saved. Likely causes: a learning rate too high for this model and optimizer "
            f"(--learning_rate {t.learning_rate:g}, --optimizer {t.optimizer}), fp16 with a T5-family model (use "
            f"--mixed_precision bf16 or no), no gradient clipping (--max_grad_norm {t.max_grad_norm:g}), or broken "
            "data. Resume from the last checkpoint with a lower --learning_rate.")

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any process: every process must stop at the same step)."""
        local = self.stop_signals is not None and self.stop_signals.received is not None
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor(int(local), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())  # a sync per step, multi-process only

    def maybe_stop(self) -> None:
        """Early stopping (:meth:`maybe_stop_early`); after a SIGTERM/SIGINT: a checkpoint of this step, then
        :class:`TrainingInterrupted`."""
        self.maybe_stop_early()
        if not self.stop_requested():
            return
        self.check_finite()
        if self.last_save_step != self.state.completed_steps:
            self.save_checkpoint()
        signum = (self.stop_signals.received if self.stop_signals and self.stop_signals.received else signal.SIGTERM)
        raise TrainingInterrupted(signum, self.state.completed_steps,
                                  self.output_dir / "checkpoints" / f"step_{self.state.completed_steps}")

    def maybe_stop_early(self) -> None:
        """``--early_stopping_patience N``: end training at this step once N evaluations in a row brought no
        improvement (counted in the state by :meth:`count_improvement`; the loop ends, then :meth:`finish`
        saves the last checkpoint). Logged once, with the step and the best step."""
        patience, state = self.args.train.early_stopping_patience, self.state
        if not patience or state.evaluations_without_improvement < patience:
            return
        if state.stopped_early_at is None:
            state.stopped_early_at = state.completed_steps
            logger.info("early stopping at step %d: %d evaluations without an improvement of %s by more than %g; "
                        "best %.4g at step %s", state.completed_steps, state.evaluations_without_improvement,
                        self.args.train.metric_for_best_model, self.args.train.early_stopping_threshold,
                        state.best_metric, state.best_step)
        self.stop_at = min(self.stop_at, state.completed_steps)

    # ---- after-step helpers: each decides whether it is due
    def maybe_log(self) -> None:
        step = self.state.completed_steps
        if step % self.args.train.logging_steps and step != self.max_train_steps:
            return
        self.check_finite()
        self.log({"step": step, "epoch": self.epoch_progress(), "elapsed_s": round(self.state.elapsed_s, 3),
                  **self.window.summary(), "train/lr": self.scheduler.get_last_lr()[0]})
        self.window = LogWindow()

    def maybe_evaluate(self, epoch_end: bool = False) -> None:
        t, step = self.args.train, self.state.completed_steps
        due = t.eval_every_epoch if epoch_end else bool(t.eval_steps) and step % t.eval_steps == 0
        if due and self.last_eval_step != step:
            self.check_finite()
            self.evaluate()

    def maybe_save(self) -> None:
        save_steps = self.args.train.save_steps
        if save_steps and self.state.completed_steps % save_steps == 0:
            self.check_finite()
            self.save_checkpoint()

    def log(self, row: dict[str, Any]) -> None:
        """Append a metrics row to ``metrics.jsonl`` (main process), the console and the trackers."""
        acc = self.accelerator
        if acc.is_main_process:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            logger.info("%s", format_row(row))
        if self.args.train.report_to:
            acc.log({k: v for k, v in row.items() if "/" in k}, step=row["step"])

    # ---- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Generate validation titles, score them, log, export a new best, write the side outputs (a
        pretraining objective: the objective's loss on the validation texts instead)."""
        started = time.time()
        if self.eval_dataset is not None:
            preds, metrics = None, {"eval/loss": self.validation_loss()}
        else:
            preds = self.generate_eval_titles()
            metrics = self.score_titles(preds)
        metrics["eval/seconds"] = time.time() - started
        if preds is not None and self.args.rl.rl_degeneration_tolerance > 0:
            if self.state.start_title_stats is None:  # the run's first evaluation is the start
                self.state.start_title_stats = {k: metrics[k] for k in DRIFT_STATISTICS}
            metrics["eval/degenerate"] = float(self.degenerate(metrics))
        self.last_eval_step = self.state.completed_steps
        self.log({"step": self.state.completed_steps, "epoch": self.epoch_progress(), **metrics})
        self.count_improvement(metrics)
        if self.is_new_best(metrics):
            self.export_best(preds, metrics)
        if preds is not None:
            self.write_eval_outputs(preds)
        elif self.accelerator.is_main_process:
            self.draw_learning_curve()
        self.model.train()
        return metrics

    def validation_loss(self) -> float:
        """Mean teacher-forced cross-entropy per target token of the corrupted validation texts (a
        pretraining objective's validation score; shards across processes, summed exactly)."""
        acc, model = self.accelerator, self.unwrapped_model()
        model.eval()
        collate = IndexedSeq2SeqCollator(self.tokenizer)
        size = self.args.train.per_device_eval_batch_size
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # loss sum, target tokens
        with acc.split_between_processes(list(range(len(self.eval_dataset)))) as shard:
            for start in range(0, len(shard), size):
                batch = collate([self.eval_dataset[i] for i in shard[start: start + size]])
                batch = {k: v.to(acc.device) for k, v in batch.items() if k != "example_index"}
                with acc.autocast():
                    logits = model(**batch).logits
                labels = batch["labels"]
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100,
                                       reduction="sum")
                total += torch.stack([loss.double(), (labels != -100).sum().double()])
        total = acc.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp(min=1))

    def generate_eval_titles(self, model=None, generation_config=None) -> list[str]:
        """Titles for every validation article (by ``model``, default the one training, with
        ``generation_config``, default the evaluation preset), generated in shards across processes, in
        input order."""
        acc, d = self.accelerator, self.args.data
        model = model if model is not None else self.unwrapped_model()
        texts = [r[d.text_column] for r in self.eval_records]
        with acc.split_between_processes(list(range(len(texts)))) as shard:
            local = generate_titles(model, self.tokenizer, [texts[i] for i in shard],
                                    generation_config or self.eval_generation_config,
                                    batch_size=self.args.train.per_device_eval_batch_size,
                                    max_source_length=d.max_source_length, source_prefix=d.source_prefix,
                                    device=acc.device, bf16=self.args.train.mixed_precision == "bf16")
            pairs = list(zip(shard, local))
        return [title for _, title in sorted(gather_object(pairs))]

    def score_titles(self, preds: list[str]) -> dict[str, float]:
        """tw_rouge F1 x100 (main process, broadcast to all), plus the mean title length in characters."""
        result: list[Any] = [None]
        if self.accelerator.is_main_process:
            refs = [r[self.args.data.summary_column] for r in self.eval_records]
            scores = get_rouge(preds, refs, segmenter=self.segmenter)
            metrics = {f"eval/{m}": 100 * scores[m]["f"] for m in ("rouge-1", "rouge-2", "rouge-l")}
            metrics["eval/rouge-sum"] = sum(metrics.values())
            metrics.update(title_statistics(preds))  # length, distinct-1/2, repeated 3-grams (degeneration)
            result = [metrics]
        return broadcast_object_list(result)[0]

    def better(self, score: float, than: float | None) -> bool:
        """Whether ``score`` beats ``than`` on ``--metric_for_best_model`` (ROUGE: higher; loss: lower)."""
        if than is None:
            return True
        return score < than if self.args.train.metric_for_best_model == "loss" else score > than

    def degenerate(self, metrics: dict[str, float]) -> bool:
        """``--rl_degeneration_tolerance``: whether these titles drifted from the starting evaluation's
        (``state.start_title_stats``, kept in the state so a resumed run compares with the same start): mean
        length (characters) or share of titles with a repeated character 3-gram above ``(1 + tolerance)``
        times the start's. The start itself is never degenerate."""
        start, limit = self.state.start_title_stats, 1 + self.args.rl.rl_degeneration_tolerance
        drifted = [f"{k[5:]} {metrics[k]:.3g} > {limit:g} x {start[k]:.3g}" for k in DRIFT_STATISTICS
                   if metrics[k] > limit * start[k]]
        if drifted:
            logger.info("step %d: titles drifted from the start (%s): not eligible as the best export",
                        self.state.completed_steps, "; ".join(drifted))
        return bool(drifted)

    def count_improvement(self, metrics: dict[str, float]) -> None:
        """Count the evaluations in a row that did not beat the best so far by more than
        ``--early_stopping_threshold`` (in the state: a resumed run keeps counting). Call before
        :meth:`is_new_best` updates the best."""
        t, best = self.args.train, self.state.best_metric
        score = metrics[f"eval/{t.metric_for_best_model}"]
        margin = -t.early_stopping_threshold if t.metric_for_best_model == "loss" else t.early_stopping_threshold
        improved = not metrics.get("eval/degenerate") and (best is None or self.better(score, best + margin))
        self.state.evaluations_without_improvement = 0 if improved else self.state.evaluations_without_improvement + 1

    def is_new_best(self, metrics: dict[str, float]) -> bool:
        """Record ``metrics`` as the best so far when they beat it on ``--metric_for_best_model`` (and are not
        :meth:`degenerate` under ``--rl_degeneration_tolerance``)."""
        score = metrics[f"eval/{self.args.train.metric_for_best_model}"]
        if metrics.get("eval/degenerate") or not self.better(score, self.state.best_metric):
            return False
        self.state.best_metric, self.state.best_step = score, self.state.completed_steps
        return True

    def prediction_rows(self, preds: list[str] | None) -> list[dict[str, Any]] | None:
        if preds is None:
            return None
        return [{"title": p, "id": r["id"]} for p, r in zip(preds, self.eval_records)]

    def write_eval_outputs(self, preds: list[str]) -> None:
        """``eval_predictions.jsonl`` (the latest titles) and ``learning_curve.png`` (main process)."""
        if not self.accelerator.is_main_process:
            return
        write_jsonl_atomic(self.output_dir / "eval_predictions.jsonl", self.prediction_rows(preds))
        self.draw_learning_curve()

    def draw_learning_curve(self) -> None:
        try:
            plot_learning_curves(self.metrics_path, self.output_dir / "learning_curve.png")
        except Exception as err:  # noqa: BLE001 - a plot must never stop training
            logger.warning("could not draw the learning curve: %s", err)

    # ---- export and checkpoints
    def title_config(self, metrics: dict[str, float]) -> TitleConfig:
        """The export contract for the current model (what prediction needs to decode like evaluation)."""
        d, e = self.args.data, self.args.eval
        return TitleConfig(
            max_source_length=d.max_source_length, max_target_length=d.max_target_length,
            source_prefix=d.source_prefix, text_column=d.text_column,
            per_device_eval_batch_size=self.args.train.per_device_eval_batch_size,
            generation_preset=e.eval_preset, generation_preset_reason="the evaluation preset (--eval_preset)",
            eval_preset=e.eval_preset, segmenter=self.segmenter.name, step=self.state.completed_steps,
            metrics={k: v for k, v in metrics.items() if k != "eval/seconds"})

    def exportable_model(self):
        """The unwrapped model; with LoRA, a merged copy (the export is a plain model); with prompt tuning,
        the peft model (``write_export`` saves its base and the soft prompt beside it)."""
        model = self.unwrapped_model()
        return copy.deepcopy(model).merge_and_unload() if self.args.model.peft == "lora" else model

    def model_card(self, title_config: TitleConfig) -> str:
        """``best/README.md`` for the export described by ``title_config`` (``model_card.py``)."""
        m = self.args.model
        options = {k: v for group in self.args.to_dict().values() for k, v in group.items()}
        tokenizer = m.tokenizer_name or (None if m.config_name else pretrained_source(self.args))
        described = (f"`{tokenizer}`" if tokenizer else f"a sentencepiece unigram model trained on the training "
                     f"texts (`{self.output_dir / 'tokenizer'}`)") + f", {len(self.tokenizer):,} tokens"
        return build_model_card(CardFacts(
            name=str(self.output_dir / "best"), title_config=title_config, options=options, command=self.args.argv,
            train_records=len(self.train_records), validation_records=len(self.eval_records),
            validation_source=validation_source(self.args), tokenizer=described,
            parameters=count_parameters(self.unwrapped_model()),
            steps_trained=self.state.completed_steps, stopped_early_at=self.state.stopped_early_at))

    def export_best(self, preds: list[str], metrics: dict[str, float]) -> None:
        """Write ``OUTPUT_DIR/best`` (:func:`export.write_export`): model, tokenizer, the evaluation
        ``generation_config.json``, ``title_config.json`` and the titles it was scored on."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            title_config = self.title_config(metrics)
            title_config.prompt_adapter = PROMPT_ADAPTER_DIR if self.args.model.peft == "prompt_tuning" else None
            final = write_export(self.output_dir / "best", self.exportable_model(), self.tokenizer,
                                 self.eval_generation_config, title_config, self.prediction_rows(preds),
                                 model_card=self.model_card(title_config))
            logger.info("new best %s = %.3f at step %d -> %s", self.args.train.metric_for_best_model,
                        self.state.best_metric, self.state.completed_steps, final)
        acc.wait_for_everyone()

    @torch.no_grad()
    def select_generation_preset(self) -> str | None:
        """``--select_generation_presets``: decode the validation set with each preset using ``best/``, score
        them, log the table, and make the winner (by ``--metric_for_best_model``) the export's own strategy:
        its ``generation_config.json``, ``title_config.json`` (``generation_preset``, the reason, every
        preset's scores, the winner's metrics) and ``eval_predictions.jsonl``. Returns the winner (None when
        there is nothing to select)."""
        names, best = selection_presets(self.args.eval), self.output_dir / "best"
        if not names or not (best / "config.json").exists() or self.eval_dataset is not None:
            return None
        key = f"eval/{self.args.train.metric_for_best_model}"
        model = load_model(best).to(self.accelerator.device)  # with a prompt-tuned export's soft prompt
        scores, titles, configs = {}, {}, {}
        for name in names:
            configs[name] = self.generation_config(name)
            started = time.time()
            titles[name] = self.generate_eval_titles(model, configs[name])
            scores[name] = {k: v for k, v in self.score_titles(titles[name]).items()}
            scores[name]["eval/seconds"] = time.time() - started
        winner = max(names, key=lambda n: scores[n][key])  # ties: the earlier (cheaper) preset in the list
        if self.accelerator.is_main_process:
            self.write_selection(best, winner, scores, configs[winner], titles[winner])
        self.accelerator.wait_for_everyone()
        return winner

    def write_selection(self, best: Path, winner: str, scores: dict, config, titles: list[str]) -> None:
        key = f"eval/{self.args.train.metric_for_best_model}"
        lines = ["| preset | ROUGE-1 | ROUGE-2 | ROUGE-L | sum | mean chars | distinct titles | seconds |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, m in scores.items():
            mark = " (selected)" if name == winner else ""
            lines.append(f"| {name}{mark} | {m['eval/rouge-1']:.2f} | {m['eval/rouge-2']:.2f} | "
                         f"{m['eval/rouge-l']:.2f} | {m['eval/rouge-sum']:.2f} | {m['eval/gen_len']:.1f} | "
                         f"{m['eval/distinct_titles']:.0%} | {m['eval/seconds']:.0f} |")
        table = "\n".join(lines)
        logger.info("decoding presets on %s (segmenter %s), best/ of step %s:\n%s", validation_source(self.args),
                    self.segmenter.name, self.state.best_step, table)
        exported = TitleConfig.load(best)
        exported.generation_preset = winner
        exported.generation_preset_reason = (f"selected after training: the best {key[5:]} on "
                                             f"{validation_source(self.args, short=True)} among "
                                             f"{', '.join(scores)}")
        exported.preset_scores = {name: {k: v for k, v in m.items() if k != "eval/seconds"}
                                  for name, m in scores.items()}
        exported.metrics = exported.preset_scores[winner]
        atomic_write_text(best / "generation_config.json", config.to_json_string())
        exported.save(best)
        atomic_write_text(best / MODEL_CARD_FILE, self.model_card(exported))  # the card names the new strategy
        write_jsonl_atomic(best / "eval_predictions.jsonl", self.prediction_rows(titles))
        atomic_write_text(self.output_dir / "preset_selection.md", f"# Decoding presets on the validation set\n\n"
                          f"{table}\n\nSelected: **{winner}** (by {key[5:]}; segmenter {self.segmenter.name}).\n")
        logger.info("best/ now decodes with %s (%s = %.2f)", winner, key[5:], scores[winner][key])

    def save_checkpoint(self) -> Path:
        self.last_save_step = self.state.completed_steps
        return save_checkpoint(self.accelerator, self.state, self.output_dir, self.args.train.save_total_limit,
                               hyperparameters=self.args.to_dict())

    def resume(self, checkpoint: str) -> None:
        """Load a checkpoint (``latest`` = the last one written under ``OUTPUT_DIR/checkpoints``) exactly,
        after comparing its hyperparameters with this run's (see ``parse_arg.resume_differences``).

        Raises:
            ArgumentError: nothing to resume in a used directory, or a change the saved state cannot take.
            ExportError: an unreadable or corrupt checkpoint (the previous complete one is named).
        """
        path = resolve_checkpoint(self.output_dir, checkpoint)
        if path is None:
            if self.metrics_path.exists():
                raise ArgumentError(f"--resume_from_checkpoint {checkpoint}: {self.output_dir} holds a run but no "
                                    "complete checkpoint to resume; use --overwrite_output_dir to start over")
            logger.info("no checkpoint under %s/checkpoints: starting from scratch", self.output_dir)
            return
        saved = checkpoint_hyperparameters(path)
        changes = resume_differences(saved, self.args) if saved else {}
        if changes.get("refused"):
            raise ArgumentError(f"cannot resume {path} with these changes (the saved model/optimizer state would not "
                                "fit): " + "; ".join(changes["refused"]) + ". Use the checkpoint's settings, or "
                                "start a new run in another --output_dir")
        self.state = load_checkpoint(self.accelerator, path)
        for change in changes.get("not_exact", []):
            logger.warning("resuming with a changed %s: the run no longer reproduces an uninterrupted one", change)
        for change in changes.get("applied", []):
            logger.info("resuming with a changed %s (applied)", change)
        self.apply_optimizer_settings()
        self.drop_metrics_after(self.state.completed_steps)
        self.adopt_exported_best()
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.completed_steps,
                    self.state.epoch, self.state.batches_in_epoch)

    def apply_optimizer_settings(self) -> None:
        """Give the restored optimizer and scheduler this run's learning rate, schedule and optimizer
        hyperparameters (a checkpoint restores its own; unchanged values give identical numbers)."""
        t = self.args.train
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)  # under Accelerate's wrapper
        scheduler.base_lrs = [t.learning_rate for _ in scheduler.base_lrs]
        groups = self.optimizer.param_groups
        for group, lr_lambda in zip(groups, scheduler.lr_lambdas):
            group["initial_lr"] = t.learning_rate
            group["lr"] = t.learning_rate * lr_lambda(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]
        groups[0]["weight_decay"] = t.weight_decay  # get_optimizer's first group decays, the second does not
        if t.optimizer == "adamw":
            for group in groups:
                group["betas"], group["eps"] = (t.adam_beta1, t.adam_beta2), t.adam_epsilon

    def drop_metrics_after(self, step: int) -> None:
        """Remove the rows an interrupted run logged after its last checkpoint (they are logged again)."""
        if not (self.accelerator.is_main_process and self.metrics_path.exists()):
            return
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and _logged_step(line) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.metrics_path, "".join(kept))
            logger.info("dropped %d metrics rows logged after step %d", len(lines) - len(kept), step)

    def adopt_exported_best(self) -> None:
        """``best/`` may hold a model exported after the checkpoint: never replace it by a worse one."""
        best = self.output_dir / "best"
        if not (best / "title_config.json").exists():
            return
        exported = TitleConfig.load(best)
        score = exported.metrics.get(f"eval/{self.args.train.metric_for_best_model}")
        if score is not None and self.better(score, self.state.best_metric):
            self.state.best_metric, self.state.best_step = score, exported.step


# ----------------------------------------------------------------------------------------------------
# setup


def make_accelerator(args: Args) -> Accelerator:
    """The run's ``Accelerator`` (``--torch_compile``: prepare wraps the model with torch.compile, inductor;
    ``check_args`` has refused it without CUDA), seeded."""
    t = args.train
    accelerator = Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                              mixed_precision=t.mixed_precision, dynamo_backend="inductor" if t.torch_compile else "no",
                              log_with=t.report_to.split(",") if t.report_to else None, project_dir=t.output_dir)
    set_seed(t.seed)
    if accelerator.device.type == "cpu":
        torch.set_flush_denormal(True)  # subnormal floats take a slow path on CPU (10x slower steps seen)
    return accelerator


def _logged_step(line: str) -> float:
    """The step of a metrics row; a torn last line (a kill during the write) counts as after every step."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf


def prepare_output_dir(args: Args) -> None:
    """Create ``--output_dir`` (with ``--overwrite_output_dir``: first delete the previous run's files) and
    write ``args.json``. ``check_args`` has already refused a used directory otherwise."""
    out = Path(args.train.output_dir)
    if args.train.overwrite_output_dir:
        removed = [name for name in RUN_FILES + RUN_DIRS if (out / name).exists()]
        for name in removed:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        if removed:
            logger.info("--overwrite_output_dir: removed %s from %s", ", ".join(removed), out)
    out.mkdir(parents=True, exist_ok=True)
    save_args(args, out / "args.json")


def load_pretraining_texts(args: Args) -> tuple[list[str], list[str]]:
    """``(training texts, validation texts)`` for a pretraining objective: the articles and titles of
    ``--pretrain_files`` (default ``--train_file``; plain-text files give one text per line) and of
    ``--validation_file`` (``prune_vocab.read_corpus``).

    Raises:
        DataError: a missing, malformed or empty file (file and line named).
    """
    d = args.data
    columns = (d.text_column, d.summary_column)
    texts, _ = read_corpus(d.pretrain_files or [d.train_file], columns)
    eval_texts, _ = read_corpus([d.validation_file], columns)
    return texts[: d.max_train_samples or None], eval_texts[: d.max_eval_samples or None]


def corrupted_texts(args: Args, tokenizer, texts: list[str], seed: int) -> CorruptedTexts:
    """The pretraining dataset of ``texts``: tokenised (at most ``--max_source_length`` tokens with EOS),
    corrupted by ``--objective`` with the tokenizer's ``<extra_id_N>`` sentinels."""
    d = args.data
    sentinels = [i for i in tokenizer.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(100)])
                 if i is not None and i != tokenizer.unk_token_id]
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=d.max_source_length - 1)["input_ids"]
    keep = [x for x in ids if x]
    return CorruptedTexts(keep, d.objective, tokenizer.eos_token_id, sentinels, seed, noise_density=d.noise_density,
                          mean_noise_span_length=d.mean_noise_span_length, mask_ratio=d.mask_ratio,
                          poisson_lambda=d.poisson_lambda)


def load_records(args: Args) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` records, cut to ``--max_train_samples`` / ``--max_eval_samples``.

    Raises:
        DataError: a malformed file (file, line and field named), or no training pairs.
    """
    d = args.data
    train = read_jsonl(d.train_file, text_column=d.text_column, summary_column=d.summary_column)
    if not train:
        raise DataError(d.train_file, "no training pairs in the file")
    if d.validation_split_percentage > 0:
        train, validation = split_validation(args, train)
    else:
        validation = read_jsonl(d.validation_file, text_column=d.text_column, summary_column=d.summary_column,
                                allow_empty_text=True)
    if not validation:
        raise DataError(d.validation_file, "no validation pairs in the file")
    return train[: d.max_train_samples or None], validation[: d.max_eval_samples or None]


def split_validation(args: Args, records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``--validation_split_percentage``: ``data_io.split_by_id`` of the training file by ``--seed``
    (before ``--max_train_samples`` cuts the training side), both sizes logged.

    Raises:
        DataError: too few distinct ids to split.
    """
    d = args.data
    try:
        train, validation = split_by_id(records, d.validation_split_percentage, args.train.seed)
    except ValueError as err:
        raise DataError(d.train_file, f"--validation_split_percentage: {err}") from err
    logger.info("validation split: %d of %d articles of %s held out for validation (%g%% of the ids, seed %d), "
                "%d left for training", len(validation), len(records), d.train_file, d.validation_split_percentage,
                args.train.seed, len(train))
    return train, validation


def validation_source(args: Args, short: bool = False) -> str:
    """Where the validation articles come from, in words (``short``: for a sentence)."""
    d = args.data
    if d.validation_split_percentage <= 0:
        return Path(d.validation_file).name if short else f"`{d.validation_file}`"
    split = f"{d.validation_split_percentage:g}% of {Path(d.train_file).name}"
    return split if short else f"{split} held out by id (seed {args.train.seed}; never trained on)"


def plan_steps(args: Args, batches_per_process: int) -> tuple[int, int, int]:
    """``(max_train_steps, warmup_steps, steps_per_epoch)`` in optimizer steps."""
    t = args.train
    steps_per_epoch = math.ceil(batches_per_process / t.gradient_accumulation_steps)
    max_train_steps = t.max_train_steps or math.ceil(t.num_train_epochs * steps_per_epoch)
    return max_train_steps, t.warmup_steps or math.ceil(t.warmup_ratio * max_train_steps), steps_per_epoch


def log_banner(trainer: Trainer, example: dict, steps_per_epoch: int, warmup: int) -> None:
    """The start banner: what is trained, on what, for how long, with one decoded training example."""
    args, acc = trainer.args, trainer.accelerator
    t = args.train
    total, trainable = count_parameters(trainer.unwrapped_model())
    logger.info("***** %s *****", "RL stage (self-critical)" if args.rl.rl_from else "supervised training")
    logger.info("  parameters: %s total, %s trainable", f"{total:,}", f"{trainable:,}")
    logger.info("  examples: %d train, %d validation; %d steps/epoch", len(trainer.train_records),
                len(trainer.eval_records), steps_per_epoch)
    logger.info("  effective batch %d = %d per device x %d processes x %d accumulation",
                t.per_device_train_batch_size * acc.num_processes * t.gradient_accumulation_steps,
                t.per_device_train_batch_size, acc.num_processes, t.gradient_accumulation_steps)
    logger.info("  total optimizer steps %d (warmup %d), device %s, precision %s", trainer.max_train_steps, warmup,
                acc.device, t.mixed_precision)
    logger.info("  config: %s", json.dumps(args.to_dict(), ensure_ascii=False))
    logger.info("  example source: %s", trainer.tokenizer.decode(example["input_ids"]))
    logger.info("  example target: %s", trainer.tokenizer.decode(example["labels"]))


def init_trackers(args: Args, accelerator: Accelerator) -> None:
    if args.train.report_to:
        flat = {f"{group}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                for group, values in args.to_dict().items() for k, v in values.items()}
        accelerator.init_trackers("mt5-title", config=flat)


def build_trainer(args: Args, factories: Factories | None = None) -> Trainer:
    """Set up everything (accelerator, data, tokenizer, model, optimizer, scheduler) from ``args``."""
    factories = factories or Factories()
    t, d = args.train, args.data
    accelerator = make_accelerator(args)
    if accelerator.is_main_process:
        prepare_output_dir(args)
    accelerator.wait_for_everyone()
    pretraining = d.objective != "title"
    if pretraining:
        train_records, eval_records = [], []
        texts, eval_texts = load_pretraining_texts(args)
    else:
        train_records, eval_records = load_records(args)
        texts = [r[d.text_column] for r in train_records] + [r[d.summary_column] for r in train_records]
    if args.model.prune_vocabulary:
        prune_vocabulary(args, accelerator)
    tokenizer = factories.tokenizer(args, texts, accelerator)
    model = factories.model(args, tokenizer)
    if pretraining:
        dataset = corrupted_texts(args, tokenizer, texts, seed=t.seed)
    else:
        dataset = tokenize_pairs(train_records, tokenizer, text_column=d.text_column, summary_column=d.summary_column,
                                 source_prefix=d.source_prefix, max_source_length=d.max_source_length,
                                 max_target_length=d.max_target_length)
    train_loader = get_train_dataloader(dataset, factories.collator(args, tokenizer), t.per_device_train_batch_size,
                                        seed=t.seed, group_by_length=t.group_by_length,
                                        num_workers=t.dataloader_num_workers)
    optimizer = get_optimizer(model, args)
    max_train_steps, warmup, steps_per_epoch = plan_steps(
        args, math.ceil(len(train_loader) / accelerator.num_processes))
    # the prepared scheduler steps once per process per optimizer step (Accelerate convention)
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=warmup * accelerator.num_processes,
                              num_training_steps=max_train_steps * accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    trainer = Trainer(args, accelerator, model, tokenizer, optimizer, scheduler, train_loader, train_records,
                      eval_records, max_train_steps)
    if pretraining:  # a fixed corruption of the validation texts (another seed than training's)
        trainer.eval_dataset = corrupted_texts(args, tokenizer, eval_texts, seed=t.seed + 1)
    log_banner(trainer, dataset[0], steps_per_epoch, warmup)
    init_trackers(args, accelerator)
    if t.resume_from_checkpoint:
        trainer.resume(t.resume_from_checkpoint)
    return trainer


# ----------------------------------------------------------------------------------------------------
# entry points

SETUP_ERRORS = (ArgumentError, DataError, ExportError, FileNotFoundError)


def configure_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def check_only(argv: list[str] | None = None) -> int:
    """Parse and check the arguments and read the data files, without loading any model: what
    ``train.sh`` runs once before ``accelerate launch`` starts several processes. Returns the exit status."""
    try:
        args = parse_args(argv)
        check_args(args)
        check_segmenter_data(args)
        load_records(args)
    except SETUP_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None, stop_after_steps: int | None = None,
         factories: Factories | None = None) -> int:
    """Train; returns the exit status: 0, 2 for a bad argument or data file (reported before any training),
    1 for a non-finite loss, 128 + the signal number after SIGTERM/SIGINT (with a resumable checkpoint)."""
    configure_logging()
    try:
        args = parse_args(argv)
        check_args(args)
        check_segmenter_data(args)
        trainer = build_trainer(args, factories)
    except SETUP_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with StopSignals() as signals:
        trainer.stop_signals = signals
        try:
            state = trainer.train(stop_after_steps=stop_after_steps)
            if stop_after_steps is None or state.completed_steps < stop_after_steps:
                trainer.select_generation_preset()
        except TrainingInterrupted as stop:
            print(f"{stop}: saved {stop.checkpoint}; continue with the same command plus "
                  "--resume_from_checkpoint latest", file=sys.stderr)
            return 128 + stop.signum
        except NonFiniteLossError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if args.train.report_to:
        trainer.accelerator.end_training()
    logger.info("done: %d steps in %.1f s; best %s = %s at step %s -> %s", state.completed_steps, state.elapsed_s,
                args.train.metric_for_best_model, state.best_metric, state.best_step,
                Path(args.train.output_dir) / "best")
    return 0


if __name__ == "__main__":
    sys.exit(main())

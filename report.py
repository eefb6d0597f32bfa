"""The homework report's figures and tables in one command, read from the runs' own files.

    python report.py --run outputs/mt5-small --output_dir report/
    python report.py --run outputs/mt5-small --rl_run outputs/mt5-small-rl --control_run outputs/mt5-small-control \\
        --sweep sweep/ --reference data/public.jsonl --output_dir report/

Writes ``report.md`` (Markdown to paste) and PNGs beside it:

- ``learning_curves.png``: training loss and validation ROUGE-1/2/L against optimizer steps (``--run``);
- ``decoding_strategies.png``: the ``predict.py --sweep`` results (``--sweep``), the final choice marked in the table;
- ``rl_vs_supervised.png``: the RL run against its supervised start and the same-budget supervised control;
- ``rouge_by_length.png``: ROUGE by reference-title length (``--reference``).

Every number comes from ``metrics.jsonl``, ``best/title_config.json``, ``args.json``, ``sweep.csv`` and
``best/eval_predictions.jsonl`` (nothing is retyped); the length buckets are scored here with tw_rouge per
pair. An input not given drops its section. Optional metrics (``eval/distinct_1``, ``eval/distinct_2``,
``eval/repeat_3gram_frac``, ``rl/kl``) get columns when the runs logged them.

Exit status: 0; 2 for a missing or unreadable input (named).
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from data_io import DataError, atomic_write_text, read_jsonl
from export import TITLE_CONFIG_FILE, ExportError, TitleConfig
from handin import check_segmenter
from plotting import plot_grouped_bars, plot_learning_curves, plot_run_comparison, read_metrics

# (metrics key, column header, decimals); the optional ones get a column only when some row has them
EVAL_COLUMNS = (("eval/rouge-1", "ROUGE-1", 2), ("eval/rouge-2", "ROUGE-2", 2), ("eval/rouge-l", "ROUGE-L", 2),
                ("eval/rouge-sum", "ROUGE-sum", 2), ("eval/gen_len", "title chars", 2),
                ("eval/distinct_1", "distinct-1", 4), ("eval/distinct_2", "distinct-2", 4),
                ("eval/repeat_3gram_frac", "repeated 3-gram", 4))
OPTIONAL_KEYS = {"eval/distinct_1", "eval/distinct_2", "eval/repeat_3gram_frac"}
RL_STAT_KEYS = (("train/loss", 4), ("rl/sample_reward", 4), ("rl/greedy_reward", 4), ("rl/advantage_abs", 4),
                ("rl/zero_advantage_frac", 4), ("rl/sample_length", 2), ("rl/kl", 4))
LENGTH_BUCKETS = (("<=10", 0, 10), ("11-15", 11, 15), ("16-20", 16, 20), ("21-30", 21, 30), (">30", 31, None))
FAMILIES = ("greedy", "beam search", "top-k", "top-p", "temperature")
HYPERPARAMETERS = (("train", "optimizer"), ("train", "learning_rate"), ("train", "lr_scheduler_type"),
                   ("train", "warmup_steps"), ("train", "max_train_steps"), ("train", "per_device_train_batch_size"),
                   ("train", "gradient_accumulation_steps"), ("train", "max_grad_norm"), ("train", "seed"),
                   ("data", "max_source_length"), ("data", "max_target_length"), ("eval", "eval_preset"),
                   ("eval", "segmenter"), ("rl", "rl_from"), ("rl", "rl_control"), ("rl", "rl_reward"),
                   ("rl", "rl_reward_weights"), ("rl", "rl_length_penalty"),
                   ("rl", "rl_repetition_penalty"), ("rl", "rl_num_samples"),
                   ("rl", "rl_baseline"), ("rl", "rl_normalize"), ("rl", "rl_gamma"), ("rl", "rl_kl_coef"),
                   ("rl", "rl_degeneration_tolerance"),
                   ("rl", "rl_rollout_preset"), ("rl", "rl_baseline_preset"))


@dataclass
class ReportArguments:
    run: str = field(metadata={"help": "The supervised run's OUTPUT_DIR (metrics.jsonl, best/)."})
    rl_run: Optional[str] = field(default=None, metadata={"help": "The RL run's OUTPUT_DIR (train.sh --rl_from ...)."})
    control_run: Optional[str] = field(
        default=None, metadata={"help": "The same-budget supervised control's OUTPUT_DIR (a supervised continuation "
                                        "from the same export, same steps, batch, optimizer and lr)."})
    sweep: Optional[str] = field(default=None, metadata={"help": "A predict.py --sweep --output_dir (sweep.csv)."})
    reference: Optional[str] = field(
        default=None, metadata={"help": "The validation file the runs evaluated on (id, maintext, title): sample "
                                        "titles and ROUGE by reference length."})
    output_dir: str = field(default="report", metadata={"help": "Where report.md and the PNGs go."})
    num_examples: int = field(default=10, metadata={"help": "Articles in the side-by-side titles."})
    seed: int = field(default=0, metadata={"help": "Seed that picks the side-by-side articles."})
    segmenter: Optional[str] = field(
        default=None, metadata={"help": "tw_rouge segmenter for the length buckets (default: the one the export "
                                        "recorded in title_config.json, else jieba)."})
    presets_file: Optional[str] = field(
        default=None, metadata={"help": "Decoding presets (default: configs/generation_presets.json), to name each "
                                        "swept preset's strategy and settings."})


class ReportError(Exception):
    """A missing or unreadable input (exit status 2)."""


# ----------------------------------------------------------------------------------------------- inputs

@dataclass
class Run:
    """What one training OUTPUT_DIR holds."""

    label: str
    path: Path
    rows: list[dict[str, Any]]
    title_config: TitleConfig | None  # best/title_config.json
    predictions: list[dict[str, Any]] | None  # best/eval_predictions.jsonl
    args: dict[str, Any] | None  # args.json

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "eval/rouge-1" in r]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]


def load_run(path: str, label: str) -> Run:
    """Read a training OUTPUT_DIR.

    Raises:
        ReportError: no ``metrics.jsonl``, or an unreadable file in it.
    """
    root = Path(path)
    if not (root / "metrics.jsonl").is_file():
        raise ReportError(f"{path}: not a training output directory (no metrics.jsonl)")
    try:
        rows = read_metrics(root / "metrics.jsonl")
        best = root / "best"
        title_config = TitleConfig.load(best) if (best / TITLE_CONFIG_FILE).is_file() else None
        predictions = (read_jsonl(best / "eval_predictions.jsonl", text_column=None)
                       if (best / "eval_predictions.jsonl").is_file() else None)
        args = json.loads((root / "args.json").read_text(encoding="utf-8")) if (root / "args.json").is_file() else None
    except (DataError, ExportError, json.JSONDecodeError) as err:
        raise ReportError(str(err)) from err
    return Run(label, root, rows, title_config, predictions, args)


def read_sweep(directory: str) -> tuple[list[dict[str, Any]], str]:
    """``(rows of sweep.csv with numbers as floats, the first line of sweep.md)``.

    Raises:
        ReportError: no ``sweep.csv``.
    """
    path = Path(directory) / "sweep.csv"
    if not path.is_file():
        raise ReportError(f"{directory}: no sweep.csv (write one with predict.py --sweep ... --output_dir {directory})")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [{k: (v if k == "preset" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    md = Path(directory) / "sweep.md"
    title = md.read_text(encoding="utf-8").splitlines()[0].lstrip("# ") if md.is_file() else ""
    return rows, title


def strategy_of(fields: dict[str, Any] | None) -> tuple[str, str]:
    """``(strategy family, its settings)`` of a decoding preset's fields, e.g. ``("top-p", "p=0.9")``."""
    if fields is None:
        return "?", "not in the presets file"
    extra = [f"{k}={fields[k]}" for k in ("no_repeat_ngram_size", "repetition_penalty", "length_penalty")
             if k in fields]
    if not fields.get("do_sample"):
        beams = fields.get("num_beams", 1)
        family, setting = ("greedy", "") if beams == 1 else ("beam search", f"beams={beams}")
    else:
        top_k, top_p, temperature = fields.get("top_k"), fields.get("top_p", 1.0), fields.get("temperature", 1.0)
        if top_p is not None and top_p < 1.0:
            family, setting = "top-p", f"p={top_p}"
        elif top_k:
            family, setting = "top-k", f"k={top_k}"
        else:
            family, setting = "temperature", f"T={temperature}"
        if temperature not in (None, 1.0) and family != "temperature":
            extra.append(f"T={temperature}")
    return family, ", ".join(filter(None, [setting, *extra]))


# ----------------------------------------------------------------------------------------------- markdown

def fmt(value: Any, decimals: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text in ("-", "")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table; columns of numbers are right-aligned."""
    numeric = [bool(rows) and all(_is_number(str(row[i])) for row in rows) for i in range(len(header))]
    align = ["---:" if n else "---" for n in numeric]
    return (["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""])


def eval_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The :data:`EVAL_COLUMNS` worth showing for ``rows`` (optional ones only when some row has them)."""
    return [c for c in EVAL_COLUMNS if c[0] not in OPTIONAL_KEYS or any(c[0] in r for r in rows)]


def last_at_or_before(run: Run, key: str, step: int) -> float | None:
    values = [r[key] for r in run.rows if r.get(key) is not None and r["step"] <= step]
    return values[-1] if values else None


# ----------------------------------------------------------------------------------------------- sections

@dataclass
class Section:
    title: str
    lines: list[str]

    @property
    def anchor(self) -> str:  # GitHub's heading anchors: lower case, spaces to dashes, punctuation dropped
        return "".join(c for c in self.title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def runs_section(runs: list[Run]) -> Section:
    metric_rows = [r.title_config.metrics for r in runs if r.title_config]
    columns = eval_columns(metric_rows)
    rows = []
    for run in runs:
        tc = run.title_config
        if tc is None:
            rows.append([run.label, str(run.path), "-"] + ["-"] * len(columns) + ["-", "-"])
            continue
        rows.append([run.label, str(run.path), fmt(tc.step)] + [fmt(tc.metrics.get(k), d) for k, _, d in columns]
                    + [tc.segmenter or "-", f"{tc.generation_preset} ({tc.generation_preset_reason})"])
    lines = ["Each run's exported best model (`best/title_config.json`): the step it was taken at and its "
             "validation scores (tw_rouge F x100; `title chars` is the mean title length).", ""]
    lines += table(["run", "directory", "best step", *[h for _, h, _ in columns], "segmenter", "decoding strategy"],
                   rows)
    return Section("Runs", lines)


def eval_table(run: Run) -> list[str]:
    """Every evaluation row of ``run``'s ``metrics.jsonl``, with the last training loss logged by then."""
    evals = run.evals
    columns = eval_columns(evals)
    best_step = run.title_config.step if run.title_config else None
    rows = [[fmt(r["step"]), fmt(r.get("epoch"), 2), fmt(last_at_or_before(run, "train/loss", r["step"]), 4)]
            + [fmt(r.get(k), d) for k, _, d in columns] + ["best" if r["step"] == best_step else ""] for r in evals]
    return table(["step", "epoch", "train loss", *[h for _, h, _ in columns], ""], rows)


def learning_curves_section(run: Run, out: Path) -> Section:
    plot_learning_curves(run.path / "metrics.jsonl", out / "learning_curves.png")
    lines = ["![learning curves](learning_curves.png)", "",
             f"Training loss and validation ROUGE F x100 against optimizer steps ({run.path}/metrics.jsonl). "
             "`train loss` is the last loss logged at or before the evaluation step.", ""]
    return Section("Learning curves", lines + eval_table(run))


def sweep_model_dir(sweep_title: str) -> Path | None:
    """The model a sweep ran on, from the first line of its ``sweep.md`` (``Decoding sweep: DIR on FILE (...``)."""
    match = re.match(r"Decoding sweep: (.+?) on ", sweep_title)
    return Path(match.group(1)) if match else None


def final_choice(sweep_title: str, runs: list[Run]) -> tuple[str | None, str]:
    """``(preset, where it was read)``: the strategy recorded in ``title_config.json`` by the export the sweep
    ran on (training's ``--select_generation_presets`` writes it), else by the supervised run's export."""
    model_dir = sweep_model_dir(sweep_title)
    if model_dir is not None and (model_dir / TITLE_CONFIG_FILE).is_file():
        try:
            tc = TitleConfig.load(model_dir)
            return tc.generation_preset, f"{model_dir}/{TITLE_CONFIG_FILE}: {tc.generation_preset_reason}"
        except ExportError:
            pass
    for run in runs:
        if run.title_config:
            tc = run.title_config
            return tc.generation_preset, f"{run.path}/best/{TITLE_CONFIG_FILE}: {tc.generation_preset_reason}"
    return None, "no export with a title_config.json"


def selection_table(run: Run) -> list[str]:
    """The presets training tried on ``run``'s best export (``title_config.json`` ``preset_scores``)."""
    scores = run.title_config.preset_scores
    columns = eval_columns(list(scores.values()))
    rows = [[name, *[fmt(m.get(k), d) for k, _, d in columns],
             "**selected**" if name == run.title_config.generation_preset else ""] for name, m in scores.items()]
    return table(["preset", *[h for _, h, _ in columns], ""], rows)


def strategies_section(sweep_rows: list[dict[str, Any]], sweep_title: str, presets: dict[str, dict],
                       runs: list[Run], out: Path) -> Section | None:
    selected = [r for r in runs if r.title_config and r.title_config.preset_scores]
    if not sweep_rows and not selected:
        return None
    lines: list[str] = []
    if sweep_rows:
        from predict import sweep_plot

        chosen, why = final_choice(sweep_title, runs)
        described = []
        for row in sweep_rows:
            family, setting = strategy_of(presets.get(row["preset"]))
            described.append((FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), family, setting, row))
        described.sort(key=lambda d: d[0])  # stable: the sweep's order within a strategy
        rows = [[family, row["preset"], setting or "-", fmt(row["rouge-1"]), fmt(row["rouge-2"]),
                 fmt(row["rouge-l"]), fmt(row["rouge-1"] + row["rouge-2"] + row["rouge-l"]),
                 fmt(row["mean_title_chars"]), fmt(row["seconds_per_article"], 3),
                 "**final choice**" if row["preset"] == chosen else ""] for _, family, setting, row in described]
        sweep_plot(sweep_rows, out / "decoding_strategies.png")
        counts = {f: sum(1 for d in described if d[1] == f) for f in FAMILIES}
        short = [f"{f} ({n})" for f, n in counts.items() if n < (1 if f == "greedy" else 2)]
        lines += [f"{sweep_title or 'predict.py --sweep'}: validation ROUGE F x100, mean title length in characters "
                  "and decoding time of each strategy (`sweep.csv`).", ""]
        lines += table(["strategy", "preset", "settings", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-sum", "title chars",
                        "s/article", ""], rows)
        if chosen not in {r["preset"] for r in sweep_rows}:
            lines += [f"Final choice: **{chosen}**, not among the swept presets ({why}).", ""]
        else:
            lines += [f"Final choice: **{chosen}** ({why}).", ""]
        if short:
            lines += [f"Fewer than two settings of: {', '.join(short)} (the report asks for at least two of each).",
                      ""]
        lines += ["![decoding strategies](decoding_strategies.png)", ""]
    for run in selected:
        lines += [f"### Selected after training: {run.label}", "",
                  f"`{run.path}/best/{TITLE_CONFIG_FILE}`: {run.title_config.generation_preset_reason}.", ""]
        lines += selection_table(run)
    return Section("Decoding strategies", lines)


def hyperparameters_table(rl: Run, control: Run | None) -> list[str]:
    runs = [rl] + ([control] if control else [])
    rows = []
    for group, name in HYPERPARAMETERS:
        values = [str((r.args or {}).get(group, {}).get(name, "-")) for r in runs]
        rows.append([name, *values])
    return table(["hyperparameter", rl.label, *([control.label] if control else [])], rows)


def eval_preset(run: Run) -> str:
    """The preset ``run`` evaluated with during training (``args.json``), ``?`` when unknown."""
    return str((run.args or {}).get("eval", {}).get("eval_preset", "?"))


def rl_section(sup: Run, rl: Run, control: Run | None, out: Path) -> Section:
    runs = [rl] + ([control] if control else [])
    start = next((r for r in rl.evals if r["step"] == 0), None)
    entries: list[tuple[str, Any, str, dict]] = []  # (model, step, decoding preset, metrics)
    if start is not None:
        entries.append((f"supervised start ({rl.label} step 0)", 0, eval_preset(rl), start))
    elif sup.title_config:
        entries.append((f"supervised start ({sup.label} best)", sup.title_config.step,
                        sup.title_config.generation_preset, sup.title_config.metrics))
    for run in runs:
        if run.title_config:
            entries.append((f"{run.label} best", run.title_config.step, run.title_config.generation_preset,
                            run.title_config.metrics))
        if run.evals:
            entries.append((f"{run.label} last", run.evals[-1]["step"], eval_preset(run), run.evals[-1]))
    columns = eval_columns([e[3] for e in entries])
    lines = ["The RL run (self-critical sequence training, `rl.py`: sampled titles rewarded against the reference, "
             "a greedy or leave-one-out baseline, the policy-gradient loss mixed with the teacher-forced loss by "
             "`rl_gamma`, optionally a KL anchor to the start; the settings are in the setup table) against the "
             "supervised export it starts from and "
             + ("the same-budget supervised control (the same export trained on with the supervised loss only)."
                if control else "(no control run given)."), "",
             "### Setup", "", "From each run's `args.json`:", ""]
    lines += hyperparameters_table(rl, control)
    if control and rl.args and control.args:
        budget = [("train", n) for n in ("max_train_steps", "per_device_train_batch_size",
                                         "gradient_accumulation_steps", "optimizer", "learning_rate",
                                         "lr_scheduler_type")]
        differ = [n for g, n in budget if rl.args.get(g, {}).get(n) != control.args.get(g, {}).get(n)]
        lines += [f"The control's budget differs in: {', '.join(differ)}." if differ
                  else "Same budget: steps, batch, accumulation, optimizer, learning rate and schedule are equal.", ""]
    lines += ["### Validation scores", ""]
    lines += ["`best` rows are the exported model as handed in (`best/title_config.json`, decoded with its own "
              "strategy); step-0 and `last` rows are evaluations from `metrics.jsonl` (the evaluation preset).", ""]
    lines += table(["model", "step", "decoding", *[h for _, h, _ in columns]],
                   [[label, fmt(step), preset, *[fmt(m.get(k), d) for k, _, d in columns]]
                    for label, step, preset, m in entries])
    panels = [("validation ROUGE-sum", "ROUGE-1+2+L F x100", [(r.label, *r.series("eval/rouge-sum")) for r in runs]),
              ("training loss", "loss", [(r.label, *r.series("train/loss")) for r in runs])]
    if any("rl/sample_reward" in r for r in rl.rows):
        panels.append(("RL reward", "ROUGE F", [(f"{rl.label} {k[3:]}", *rl.series(k))
                                                for k in ("rl/sample_reward", "rl/greedy_reward")]))
    if any("rl/kl" in r for r in rl.rows):
        panels.append(("KL to the supervised model", "rl/kl", [(rl.label, *rl.series("rl/kl"))]))
    hlines = {"validation ROUGE-sum": ("supervised start", start["eval/rouge-sum"])} if start else None
    plot_run_comparison(panels, out / "rl_vs_supervised.png", hlines)
    lines += ["![RL against supervised](rl_vs_supervised.png)", "",
              f"`train loss` of {rl.label} is the mixed RL + ML loss, of a control the supervised loss only.", ""]
    stats = [(k, d) for k, d in RL_STAT_KEYS if any(k in r for r in rl.rows)]
    if stats:
        lines += ["### RL training statistics", "", f"First and last logged values ({rl.path}/metrics.jsonl):", ""]
        rows = []
        for key, decimals in stats:
            steps, values = rl.series(key)
            rows.append([key, fmt(steps[0]), fmt(values[0], decimals), fmt(steps[-1]), fmt(values[-1], decimals)])
        lines += table(["statistic", "first step", "first", "last step", "last"], rows)
    return Section("RL against supervised", lines)


def examples_section(runs: list[Run], references: list[dict], num_examples: int, seed: int) -> Section | None:
    with_predictions = [r for r in runs if r.predictions]
    if not with_predictions:
        return None
    by_run = [{p["id"]: p["title"] for p in r.predictions} for r in with_predictions]
    common = [ref for ref in references if all(ref["id"] in titles for titles in by_run)]
    if not common:
        return None
    chosen = sorted(random.Random(seed).sample(range(len(common)), min(num_examples, len(common))))
    rows = []
    for i in chosen:
        ref = common[i]
        rows.append([ref["id"], ref["maintext"][:60] + ("…" if len(ref["maintext"]) > 60 else ""), ref["title"],
                     *[titles[ref["id"]] for titles in by_run]])
    lines = [f"{len(chosen)} validation articles drawn with seed {seed} from the {len(common)} every run titled, with "
             "the reference and each run's best export's titles (`best/eval_predictions.jsonl`).", ""]
    lines += table(["id", "article (start)", "reference", *[r.label for r in with_predictions]], rows)
    return Section("Sample titles", lines)


def length_bucket(title: str) -> str:
    n = len(title.strip())
    return next(name for name, low, high in LENGTH_BUCKETS if n >= low and (high is None or n <= high))


def length_section(runs: list[Run], references: list[dict], segmenter: str, out: Path) -> Section | None:
    from tw_rouge import get_rouge

    refs = {r["id"]: r["title"] for r in references}
    with_predictions = [r for r in runs if r.predictions]
    if not with_predictions:
        return None
    names = [b[0] for b in LENGTH_BUCKETS]
    scores: dict[str, dict[str, dict[str, float]]] = {}  # run -> bucket -> metric -> mean F x100
    counts: dict[str, dict[str, int]] = {}
    for run in with_predictions:
        pairs = [(p["title"], refs[p["id"]]) for p in run.predictions if p["id"] in refs]
        if not pairs:
            continue
        per_pair = get_rouge([p for p, _ in pairs], [r for _, r in pairs], avg=False, segmenter=segmenter)
        buckets = {name: [] for name in [*names, "all"]}
        for (_, ref), score in zip(pairs, per_pair):
            buckets[length_bucket(ref)].append(score)
            buckets["all"].append(score)
        counts[run.label] = {b: len(v) for b, v in buckets.items()}
        scores[run.label] = {b: {m: 100 * sum(s[m]["f"] for s in v) / len(v) for m in ("rouge-1", "rouge-2", "rouge-l")}
                             for b, v in buckets.items() if v}
    if not scores:
        return None
    labels = list(scores)
    header = ["reference length (chars)", "articles"] + [f"{label} {m}" for label in labels
                                                        for m in ("R-1", "R-2", "R-L")]
    rows = []
    for bucket in [*names, "all"]:
        n = counts[labels[0]][bucket]
        row = [bucket, fmt(n)]
        for label in labels:
            s = scores[label].get(bucket)
            row += [fmt(s[m]) if s else "-" for m in ("rouge-1", "rouge-2", "rouge-l")]
        rows.append(row)
    plot_grouped_bars(names, [(m.upper(), {label: [scores[label].get(b, {}).get(m, 0.0) for b in names]
                                           for label in labels}) for m in ("rouge-1", "rouge-2", "rouge-l")],
                      "reference title length (characters)", "F x100", out / "rouge_by_length.png")
    lines = [f"tw_rouge F x100 of each run's best export's validation titles, averaged per bucket of reference "
             f"title length in characters (segmenter {segmenter}; `all` is every scored pair). Articles per bucket "
             f"are counted for {labels[0]}.", ""]
    lines += table(header, rows)
    lines += ["![ROUGE by reference length](rouge_by_length.png)", ""]
    return Section("ROUGE by reference length", lines)


# ----------------------------------------------------------------------------------------------- main

def build_report(args: ReportArguments) -> Path:
    """Read the inputs, write ``report.md`` and the figures into ``--output_dir``; returns report.md's path.

    Raises:
        ReportError: a given input that is missing or unreadable.
    """
    from generation import load_presets

    sup = load_run(args.run, "supervised")
    rl = load_run(args.rl_run, "RL") if args.rl_run else None
    control = load_run(args.control_run, "control") if args.control_run else None
    sweep_rows, sweep_title = read_sweep(args.sweep) if args.sweep else ([], "")
    try:
        references = read_jsonl(args.reference, require_summary=True) if args.reference else []
        presets = load_presets(args.presets_file) if args.sweep else {}
    except (DataError, OSError, ValueError) as err:
        raise ReportError(str(err)) from err
    runs = [r for r in (sup, rl, control) if r]
    segmenter = args.segmenter or next((r.title_config.segmenter for r in runs
                                        if r.title_config and r.title_config.segmenter), None) or "jieba"
    if references:  # checked before anything is written
        try:
            check_segmenter(segmenter)
        except ValueError as err:
            raise ReportError(f"{err} (or give --segmenter jieba)") from err
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    sections = [runs_section(runs), learning_curves_section(sup, out)]
    strategies = strategies_section(sweep_rows, sweep_title, presets, runs, out)
    if strategies:
        sections.append(strategies)
    if rl:
        sections.append(rl_section(sup, rl, control, out))
    if references:
        for section in (examples_section(runs, references, args.num_examples, args.seed),
                        length_section(runs, references, segmenter, out)):
            if section:
                sections.append(section)
    text = ["# Report figures", "",
            "Generated by `python report.py` from the runs' own files; regenerate rather than edit the numbers.", "",
            "## Contents", ""]
    text += [f"{i}. [{s.title}](#{s.anchor})" for i, s in enumerate(sections, start=1)] + [""]
    for s in sections:
        text += [f"## {s.title}", "", *s.lines]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text).rstrip("\n") + "\n")
    return path


def parse_args(argv: Sequence[str] | None = None) -> ReportArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ReportArguments, description=__doc__.split("\n")[0], allow_abbrev=False)
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = build_report(args)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and its figures in {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

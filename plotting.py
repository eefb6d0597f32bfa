"""Figures: the learning curve from ``metrics.jsonl`` (training loss, eval ROUGE and RL rewards vs step), and the
report's run comparisons and grouped bar charts (``report.py``)."""

from __future__ import annotations

import os

from data_io import atomic_open, read_jsonl


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file; for a step logged twice (a resumed run) the last wins."""
    rows: dict[tuple, dict] = {}
    for row in read_jsonl(path, text_column=None, require_summary=False, require_id=False):
        rows[(row.get("step"), tuple(sorted(k for k in row if "/" in k)))] = row
    return sorted(rows.values(), key=lambda r: r.get("step", 0))


def plot_learning_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Draw ``train/loss``, ``eval/rouge-{1,2,l}`` (F x100), the title statistics (distinct-1/2, repeated
    3-grams, mean length) and, in the RL stage, ``rl/*_reward`` and ``rl/kl`` against the optimizer step into
    ``out_png`` (written atomically). Uses matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)

    def series(key):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = [("train", ["train/loss"], "loss"),
              ("eval", ["eval/rouge-1", "eval/rouge-2", "eval/rouge-l"], "ROUGE F x100")]
    if any("eval/distinct_1" in r for r in rows):  # degeneration: diversity and repetition of the titles
        panels.append(("titles", ["eval/distinct_1", "eval/distinct_2", "eval/repeat_3gram_frac"], "fraction"))
    if any("rl/sample_reward" in r for r in rows):
        panels.append(("rl", ["rl/sample_reward", "rl/greedy_reward", "rl/kl"], "reward (ROUGE F), KL"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (title, keys, ylabel) in zip(axes, panels):
        for key in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        if title == "titles":  # the mean title length, in characters, on its own axis
            xs, ys = series("eval/gen_len")
            if xs:
                twin = ax.twinx()
                twin.plot(xs, ys, color="grey", linestyle="--", label="eval/gen_len (chars)")
                twin.set_ylabel("mean title length (characters)")
                twin.legend(fontsize=8, loc="lower right")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out_png)


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG atomically (:func:`data_io.atomic_open`: an existing file is replaced
    whole or not at all, with the usual file permissions), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def plot_run_comparison(panels: list[tuple[str, str, list[tuple[str, list[int], list[float]]]]],
                        out_png: str | os.PathLike, hlines: dict[str, tuple[str, float]] | None = None) -> None:
    """One panel per ``(title, ylabel, [(label, steps, values), ...])``, curves against the optimizer step;
    ``hlines`` maps a panel title to a ``(label, value)`` drawn as a dashed horizontal line (e.g. the
    supervised start). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, ylabel, curves) in zip(axes[0], panels):
        for label, xs, ys in curves:
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        if hlines and title in hlines:
            label, value = hlines[title]
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=label)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out_png)


def plot_grouped_bars(groups: list[str], panels: list[tuple[str, dict[str, list[float]]]], xlabel: str,
                      ylabel: str, out_png: str | os.PathLike) -> None:
    """One panel per ``(title, {series label: one value per group})``: bars grouped by ``groups``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(5, 1.2 * len(groups) + 2) * len(panels) / 1.5, 3.8),
                             squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        width = 0.8 / max(len(series), 1)
        for k, (label, values) in enumerate(series.items()):
            offset = (k - (len(series) - 1) / 2) * width
            ax.bar([i + offset for i in range(len(groups))], values, width, label=label)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out_png)

"""Learning-curve PNG from ``metrics.jsonl``: training loss, eval ROUGE and (RL stage) rewards vs step."""

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

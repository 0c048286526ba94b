"""PNG charts for the pull request: the loss curve (train) and base vs tuned metrics, with confusion
matrices for classifiers (evaluate).

Images rather than vega specs, so they show in a pull request and offline; DVC declares them as
image plots and metrics/report.md links them.
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

SCORE_METRICS = ("exact_match", "rougeL", "rouge1", "bleu", "chrf", "accuracy", "macro_f1", "micro_f1")  # 0-100


def loss_curve(log_history: list[dict], path: Path) -> None:
    """Train loss at every logging step and val loss at every evaluation, against the global step."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    val = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    if train:
        axes.plot(*zip(*train), label="train loss")
    if val:
        axes.plot(*zip(*val), "o-", label="val loss")
    axes.set(xlabel="step", ylabel="loss", title="Training loss")
    axes.grid(alpha=0.3)
    if train or val:
        axes.legend()
    save(figure, path)


def metrics_chart(results: dict, path: Path, confusions: dict[str, list[dict]] | None = None,
                  labels: list[str] | None = None) -> None:
    """Grouped bars of the 0-100 scores, one bar per model (`base`, `tuned`) present in `results`; beside
    them each model's confusion matrix of `labels`, where `confusions` holds actual/predicted pairs."""
    models = [name for name in ("base", "tuned") if name in results]
    metrics = [m for m in SCORE_METRICS if m in results["tuned"]]
    matrices = [name for name in models if (confusions or {}).get(name)]
    figure, panels = plt.subplots(1, 1 + len(matrices), figsize=(6.4 + 4 * len(matrices), 3.6 + 0.4 * bool(matrices)),
                                  squeeze=False)
    axes = panels[0][0]
    for name, matrix_axes in zip(matrices, panels[0][1:]):
        confusion_matrix(confusions[name], labels, matrix_axes, f"{name}: actual vs predicted")
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [results[model][m] for m in metrics]
        bars = axes.bar([x + i * width for x in range(len(metrics))], values, width, label=model)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(metrics))], metrics)
    axes.set(ylim=(0, 105), ylabel="score (0-100)", title="Test split: base vs tuned")
    axes.legend()
    save(figure, path)


def confusion_matrix(pairs: list[dict], labels: list[str], axes, title: str) -> None:
    """scikit-learn's confusion matrix display of actual/predicted pairs (rows: actual, columns: predicted)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    ConfusionMatrixDisplay.from_predictions([p["actual"] for p in pairs], [p["predicted"] for p in pairs],
                                            labels=labels, ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(title)
    axes.tick_params(axis="x", labelrotation=30)


def save(figure, path: Path) -> None:
    """Write the PNG atomically, without the matplotlib version in its metadata (same data, same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.tight_layout()
    figure.savefig(temporary, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    os.replace(temporary, path)

"""evaluate: predict the test split with the tuned model (and the base model), score the predictions.

Outs: metrics/eval.json (`tuned`, `base` and `delta` groups of the kind's metrics), metrics/samples.json
(the question, reference and each model's answer: a table for `dvc plots`), metrics/thumbnails/ (the
samples' images, for vision models), metrics/confusion.json (the tuned model's actual/predicted class
pairs, a confusion plot; empty for kinds without classes), metrics/eval.png (base vs tuned scores, and
confusion matrices) and metrics/report.md (what a reviewer reads in a pull request; it shows both charts).
"""

import json
from numbers import Number
from pathlib import Path

from stages.lib import kinds, plots
from stages.lib.artifacts import ADAPTER_DIR, PREPARED_DIR, THUMBNAILS_DIR, Manifest, read_split
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.outputs import atomic_dir, markdown_cell, write_json
from stages.lib.params import load_params
from stages.lib.runtime import for_inference, probe

METRICS_FILE = Path("metrics/eval.json")
SAMPLES_FILE = Path("metrics/samples.json")
CONFUSION_FILE = Path("metrics/confusion.json")
REPORT_FILE = Path("metrics/report.md")
CHART_FILE = Path("metrics/eval.png")
LOSS_PLOT = "loss.png"  # train's loss curve, beside the report
REPORT_SAMPLES = 5


def main() -> None:
    params = load_params()
    settings = params.evaluate
    rows = read_split("test")[: settings.max_samples]
    if not rows:
        raise SlothlineError(f"{PREPARED_DIR}/test.jsonl: the test split is empty; set data.test_fraction > 0 "
                             "and rerun prepare")
    manifest = Manifest.read(ADAPTER_DIR)
    task = kinds.get(manifest.kind)
    kinds.check_applicable(task, params)
    runtime = for_inference(manifest, probe())
    from stages.lib import backends  # imports unsloth (when used) before transformers

    model, processor = backends.load_trained(task, manifest, runtime, ADAPTER_DIR)
    decided_by = task.evaluation_settings(model, settings)
    results, answers = ({"settings": decided_by} if decided_by else {}), {}

    def score(model, name: str) -> None:
        answers[name] = task.predict(model, processor, rows, settings, desc=f"{name} answers")
        results[name] = task.score(model, processor, rows, answers[name], settings)

    score(model, "tuned")
    if settings.compare_base:
        with backends.base_model(task, manifest, runtime, model) as base:
            score(base, "base")
        results["delta"] = {k: round(v - results["base"][k], 4) for k, v in results["tuned"].items()
                            if isinstance(v, Number) and isinstance(results["base"][k], Number)}
    results["samples"] = len(rows)

    with atomic_dir(THUMBNAILS_DIR) as media_dir:
        samples = [task.sample(row, {name: answers[name][i] for name in answers}, media_dir)
                   for i, row in enumerate(rows)]
        (media_dir / "README.md").write_text("Images of the samples in metrics/samples.json and report.md "
                                             "(vision models), written by evaluate.\n")
    confusions = {name: task.confusion(rows, answers[name]) for name in answers}
    write_json(METRICS_FILE, results)
    write_json(SAMPLES_FILE, samples)
    write_json(CONFUSION_FILE, confusions["tuned"])
    plots.metrics_chart(results, CHART_FILE, confusions, manifest.labels)
    tuned_name = f"{manifest.base_model} + adapter" if manifest.method == "lora" else "the fine-tuned model"
    REPORT_FILE.write_text(report(results, samples[:REPORT_SAMPLES], tuned_name)
                           + task.report_sections(rows, answers, results))
    print(json.dumps({name: results[name] for name in ("tuned", "base", "delta") if name in results}, indent=1))


def report(results: dict, samples: list[dict], tuned_name: str) -> str:
    """Markdown for a pull request: both charts, headline metrics (the single values) with base and delta,
    then a few samples."""
    groups = [g for g in ("tuned", "base", "delta") if g in results]
    lines = [f"# Evaluation of {tuned_name} on {results['samples']} test samples", "",
             f"![Base vs tuned]({CHART_FILE.name}) ![Training loss]({LOSS_PLOT})", "",
             "| metric | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for metric in (m for m, value in results["tuned"].items() if not isinstance(value, dict)):
        lines.append(f"| {metric} | " + " | ".join(cell_value(results[g].get(metric), g == "delta") for g in groups)
                     + " |")
    columns = [c for c in ("image", "prompt", "reference", "base", "tuned") if samples and c in samples[0]]
    lines += ["", "## Samples", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for sample in samples:
        lines.append("| " + " | ".join(markdown_cell(sample[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def cell_value(value, signed: bool) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Number):
        return f"{value:+g}" if signed else f"{value:g}"
    return str(value)


if __name__ == "__main__":
    run_stage(main)

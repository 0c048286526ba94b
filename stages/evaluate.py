"""evaluate: predict the test split with the tuned model (and the base model), score the predictions.

Outs: metrics/eval.json (`tuned`, `base` and `delta` groups of the kind's metrics, and the settings that
decided the predictions), metrics/samples.json (each row's question, reference and answers: a table for
`dvc plots`), metrics/thumbnails/ (the samples' images, vision models), metrics/confusion.json (the tuned
model's actual/predicted classes; [] without classes), metrics/eval.png and metrics/report.md.
"""

import json

from slothline import backends, kinds, plots
from slothline.artifacts import (CONFUSION_FILE, EVAL_CHART, EVAL_METRICS, PREPARED_DIR, REPORT_FILE, SAMPLES_FILE,
                                 THUMBNAILS_DIR, TUNED_DIR, Manifest, atomic_dir, read_split, write_json)
from slothline.dvcfile import require_model_declared
from slothline.errors import SlothlineError, run_stage
from slothline.params import load_params
from slothline.report import deltas, report
from slothline.runtime import evaluation_runtime, probe


def main() -> None:
    params = load_params()
    test_rows = read_split("test")
    rows = test_rows[: params.evaluate.max_samples]
    if len(rows) < len(test_rows):
        print(f"note: evaluate.max_samples: {len(rows)} of the {len(test_rows)} test rows are scored; set it to "
              f"{len(test_rows)} or null to score them all")
    if not rows:
        raise SlothlineError(f"{PREPARED_DIR}/test.jsonl: the test split is empty; set data.test_fraction > 0 "
                             "and rerun prepare")
    manifest = Manifest.read(TUNED_DIR)
    if manifest.method == "lora" or params.evaluate.compare_base:  # the base model's files are read
        require_model_declared(manifest.base_model, ["evaluate"])
    runtime = evaluation_runtime(manifest, probe())  # the hf backend: transformers' compiled generation
    task = kinds.get(manifest.kind)
    model, processor = backends.load_trained(task, manifest, runtime, TUNED_DIR)
    base = (lambda: backends.base_model(task, manifest, runtime, model)) if params.evaluate.compare_base else None
    with atomic_dir(THUMBNAILS_DIR) as media_dir:
        evaluation = task.evaluate(model, processor, rows, params, base, media_dir)
        (media_dir / "README.md").write_text("Images of the samples in metrics/samples.json and report.md "
                                             "(vision models), written by evaluate.\n")
    results = {"settings": evaluation.settings} if evaluation.settings else {}
    results.update(evaluation.metrics)
    if "base" in results:
        results["delta"] = deltas(results["tuned"], results["base"])
    results["samples"] = len(rows)
    write_json(EVAL_METRICS, results)
    write_json(SAMPLES_FILE, evaluation.samples)
    write_json(CONFUSION_FILE, evaluation.confusion.get("tuned", []))
    plots.metrics_chart(results, EVAL_CHART, evaluation.confusion, manifest.labels)
    tuned_name = f"{manifest.base_model} + adapter" if manifest.method == "lora" else "the fine-tuned model"
    REPORT_FILE.write_text(report(results, evaluation.samples, tuned_name, evaluation.report_sections))
    print(json.dumps({name: results[name] for name in ("tuned", "base", "delta") if name in results}, indent=1))


if __name__ == "__main__":
    run_stage(main)

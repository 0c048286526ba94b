"""evaluate: generate answers for the test split with the tuned model (and the base model), score them.

Outs: metrics/eval.json (`tuned`, `base` and `delta` groups: BLEU, chrF, ROUGE-1/2/L/Lsum, exact
match, loss and perplexity on the trained tokens), metrics/samples.json (prompt, reference, base and tuned answers,
a table for `dvc plots`), metrics/eval.png (base vs tuned scores) and metrics/report.md (what a reviewer
reads in a pull request; it shows both charts).
"""

import json
from pathlib import Path

from stages.lib import plots
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.mixing import PREPARED_DIR, read_split
from stages.lib.outputs import write_json
from stages.lib.params import load_params

ADAPTER_DIR = Path("models/adapter")
METRICS_FILE = Path("metrics/eval.json")
SAMPLES_FILE = Path("metrics/samples.json")
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
    if not (ADAPTER_DIR / "adapter_config.json").is_file() and not (ADAPTER_DIR / "config.json").is_file():
        raise SlothlineError(f"{ADAPTER_DIR}: no trained adapter or model there; run `dvc repro train` first")
    from stages.lib import backends  # imports unsloth (when used) before transformers
    from stages.lib.generate import answer_loss, generate
    from stages.lib.metrics import loss_metrics, text_metrics
    from stages.lib.templates import tokenize_for_training, turn_markers

    runtime = backends.choose_runtime(params)
    model, tokenizer = backends.load_for_inference(runtime, params, ADAPTER_DIR)
    has_adapter = hasattr(model, "disable_adapter")  # a PeftModel; else a fully fine-tuned model
    markers = turn_markers([r["text"] for r in rows]) if params.train.train_on_responses_only else None
    dataset = tokenize_for_training(rows, tokenizer, markers)
    references = [r["reference"] for r in rows]

    def score(model, name: str) -> tuple[dict, list[str]]:
        answers = generate(model, tokenizer, [r["prompt"] for r in rows], settings.batch_size,
                           settings.max_new_tokens, settings.temperature, settings.top_p, settings.seed,
                           desc=f"{name} answers")
        return {**text_metrics(answers, references),
                **loss_metrics(*answer_loss(model, dataset, tokenizer.pad_token_id, settings.batch_size,
                                            params.model.max_seq_length))}, answers

    results, answers = {}, {}
    results["tuned"], answers["tuned"] = score(model, "tuned")
    if settings.compare_base:
        if has_adapter:
            with model.disable_adapter():
                results["base"], answers["base"] = score(model, "base")
        else:  # load the base beside the fully fine-tuned model
            base, _ = backends.load_for_inference(runtime, params, None)
            results["base"], answers["base"] = score(base, "base")
        results["delta"] = {k: round(results["tuned"][k] - results["base"][k], 4) for k in results["tuned"]}
    results["samples"] = len(rows)

    samples = [{"id": r["id"], "prompt": last_question(r["messages"]), "reference": r["reference"],
                **{name: answers[name][i] for name in answers}} for i, r in enumerate(rows)]
    write_json(METRICS_FILE, results)
    write_json(SAMPLES_FILE, samples)
    plots.metrics_chart(results, CHART_FILE)
    tuned_name = f"{params.model.name} + adapter" if has_adapter else "the fine-tuned model"
    REPORT_FILE.write_text(report(results, samples[:REPORT_SAMPLES], tuned_name))
    print(json.dumps({name: results[name] for name in ("tuned", "base", "delta") if name in results}, indent=1))


def last_question(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def report(results: dict, samples: list[dict], tuned_name: str) -> str:
    """Markdown for a pull request: headline metrics with base and delta, then a few samples."""
    groups = [g for g in ("tuned", "base", "delta") if g in results]
    lines = [f"# Evaluation of {tuned_name} on {results['samples']} test samples", "",
             f"![Base vs tuned]({CHART_FILE.name}) ![Training loss]({LOSS_PLOT})", "",
             "| metric | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for metric in results["tuned"]:
        lines.append(f"| {metric} | " + " | ".join(f"{results[g][metric]:+g}" if g == "delta" else f"{results[g][metric]:g}"
                                                  for g in groups) + " |")
    lines += ["", "## Samples", "", "| prompt | reference | " + " | ".join(g for g in ("base", "tuned") if g in groups) + " |",
              "|---|---|" + "---|" * sum(g in groups for g in ("base", "tuned"))]
    cell = lambda text: text.replace("|", "\\|").replace("\n", "<br>")
    for sample in samples:
        lines.append("| " + " | ".join(cell(sample[k]) for k in ("prompt", "reference", "base", "tuned") if k in sample) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(main)

"""metrics/report.md: what a reviewer reads in a pull request. Both charts, the headline metrics of the tuned
model with base and delta, a few samples, then what the kind adds (per-class tables, misclassified rows)."""

from numbers import Number

from slothline.artifacts import EVAL_CHART, LOSS_PLOT

REPORT_SAMPLES = 5


def report(results: dict, samples: list[dict], tuned_name: str, sections: str) -> str:
    groups = [g for g in ("tuned", "base", "delta") if g in results]
    lines = [f"# Evaluation of {tuned_name} on {results['samples']} test samples", "",
             f"![Base vs tuned]({EVAL_CHART.name}) ![Training loss]({LOSS_PLOT.name})", "",
             "| metric | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for metric in (m for m, value in results["tuned"].items() if not isinstance(value, dict)):
        lines.append(f"| {metric} | " + " | ".join(cell_value(results[g].get(metric), g == "delta") for g in groups)
                     + " |")
    samples = samples[:REPORT_SAMPLES]
    columns = [c for c in ("image", "prompt", "reference", "base", "tuned") if samples and c in samples[0]]
    lines += ["", "## Samples", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for sample in samples:
        lines.append("| " + " | ".join(markdown_cell(sample[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n" + sections


def deltas(tuned: dict, base: dict) -> dict:
    """tuned - base for every metric that is a number in both (rounded to 4 places)."""
    return {k: round(v - base[k], 4) for k, v in tuned.items() if isinstance(v, Number) and isinstance(base[k], Number)}


def cell_value(value, signed: bool) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Number):
        return f"{value:+g}" if signed else f"{value:g}"
    return str(value)


def markdown_cell(text) -> str:
    """`text` as one cell of a Markdown table (pipes escaped, line breaks as <br>)."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")

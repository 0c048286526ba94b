"""A pull-request comment in markdown: what this workspace changed against a base revision.

    python -m slothline.comment --base origin/main > comment.md
    cml comment create comment.md        # or any CI's comment step; cml uploads the charts it links

It holds `dvc metrics diff` and `dvc params diff` against the base (DVC's own tables), the charts of
metrics/report.md (base vs tuned scores, training loss), and a few test questions side by side: the answer
at the base revision and here, those whose answers changed first.
"""

import argparse
import json
import subprocess
import sys

from slothline.artifacts import EVAL_CHART, LOSS_PLOT, SAMPLES_FILE
from slothline.errors import SlothlineError, run_stage


def dvc_table(*args: str) -> str:
    """The markdown table a `dvc ... --md` command prints ("" where nothing changed: a header alone)."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--md"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlothlineError(f"dvc {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    table = done.stdout.strip()
    return table if len(table.splitlines()) > 2 else ""


def samples_at(rev: str | None) -> list[dict]:
    """metrics/samples.json at `rev` (None: the workspace); [] where it is not there."""
    import dvc.api
    from dvc.exceptions import PathMissingError

    try:
        return json.loads(dvc.api.read(str(SAMPLES_FILE), rev=rev))
    except (FileNotFoundError, json.JSONDecodeError, PathMissingError):
        return []


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:200]


def side_by_side(base: str, count: int) -> str:
    """Up to `count` test questions with the tuned answer at `base` and here, changed answers first."""
    before = {row["id"]: row for row in samples_at(base)}
    rows = [row for row in samples_at(None) if row["id"] in before]
    rows.sort(key=lambda row: row.get("tuned") == before[row["id"]].get("tuned"))
    if not rows:
        return ""
    lines = [f"| question | reference | at {cell(base)} | here |", "|---|---|---|---|"]
    lines += [f"| {cell(row.get('prompt', row['id']))} | {cell(row.get('reference', ''))} | "
              f"{cell(before[row['id']].get('tuned', ''))} | {cell(row.get('tuned', ''))} |" for row in rows[:count]]
    changed = sum(row.get("tuned") != before[row["id"]].get("tuned") for row in rows)
    return f"{changed} of {len(rows)} answers changed.\n\n" + "\n".join(lines)


def comment(base: str, samples: int = 5) -> str:
    metrics = dvc_table("metrics", "diff", base)
    params = dvc_table("params", "diff", base)
    answers = side_by_side(base, samples)
    return "\n\n".join(part for part in (
        f"## Slothline: this change against `{base}`",
        "### Metrics\n\n" + (metrics or "No metric changed."),
        "### Params\n\n" + (params or "No param changed."),
        f"### Charts\n\n![Base vs tuned]({EVAL_CHART})\n![Training loss]({LOSS_PLOT})",
        f"### Answers\n\n{answers}" if answers else "",
    ) if part) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare with: a branch, tag or commit")
    parser.add_argument("--samples", type=int, default=5, help="test questions shown side by side")
    args = parser.parse_args()
    print(comment(args.base, args.samples), end="")


if __name__ == "__main__":
    run_stage(main)

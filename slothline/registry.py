"""Promote a model to a stage of the model registry (GTO: git tags) only when it beats the model there now.

    python -m slothline.registry tuned-model --stage prod --metric tuned.exact_match
    python -m slothline.registry tuned-model --stage prod --metric tuned.loss --lower-is-better --ref v2

The candidate is the artifact (dvc.yaml `artifacts:`) at `--ref` (default HEAD), scored by its committed
metrics/eval.json; the model in `--stage` now is the version GTO shows there, scored by its commit's
metrics. The first model of a stage needs no comparison. A promoted candidate gets a version (registered
at the ref if it has none) and the stage (`git push --tags` shares both). Exit status 1 when the candidate
does not beat the stage's model: a CI step can gate on it.
"""

import argparse
import sys

from slothline.artifacts import EVAL_METRICS
from slothline.errors import SlothlineError, run_stage


def metric_at(rev: str, key: str) -> float:
    """`key` (dotted: tuned.exact_match) of metrics/eval.json as committed at `rev`."""
    import dvc.api

    value = dvc.api.metrics_show(str(EVAL_METRICS), rev=rev)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SlothlineError(f"--metric: {EVAL_METRICS} at {rev} has no {key!r}; use a dotted key of it, "
                                 "e.g. tuned.exact_match or tuned.loss")
        value = value[part]
    return float(value)


def in_stage(name: str, stage: str) -> str | None:
    """The commit of the version of `name` in `stage` now, or None (also before `name` has any version)."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        versions = gto.api.find_versions_in_stage(".", name, stage)
    except ArtifactNotFound:
        return None
    return versions[0].commit_hexsha if versions else None


def promote(name: str, stage: str, metric: str, ref: str = "HEAD", lower_is_better: bool = False) -> bool:
    """Assign `stage` to the version of `name` at `ref` if its `metric` beats that of the version in `stage`;
    whether it did."""
    import gto.api

    candidate = metric_at(ref, metric)
    current = in_stage(name, stage)
    if current is not None:
        incumbent = metric_at(current, metric)
        better = candidate < incumbent if lower_is_better else candidate > incumbent
        print(f"{name} at {ref}: {metric} {candidate} against {incumbent} of {stage} ({current[:8]})")
        if not better:
            print(f"not promoted: {stage} keeps its model")
            return False
    gto.api.assign(".", name, stage, ref=ref)
    print(f"{name} at {ref} is now in {stage}; share it with `git push --tags`")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="an artifact of dvc.yaml: tuned-model, merged-model or exported-model")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--metric", required=True, help="a dotted key of metrics/eval.json, e.g. tuned.exact_match")
    parser.add_argument("--ref", default="HEAD")
    parser.add_argument("--lower-is-better", action="store_true", help="for losses and perplexity")
    args = parser.parse_args()
    if not promote(args.name, args.stage, args.metric, args.ref, args.lower_is_better):
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main)

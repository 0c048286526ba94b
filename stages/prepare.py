"""prepare: read every data source, convert its rows to the kind's canonical records, mix, dedupe and split.

Outs: data/prepared/{train,val,test}.jsonl (canonical records plus what the kind renders from them), the files
the records refer to (a vision model's images) and metrics/data.json (counts per split and source, skipped
rows, duplicates, test rows whose text (normalised as dedupe compares it) is also in train, and the kind's
statistics such as token lengths and image sizes). preference.sources (causal LMs) are read, mixed, deduplicated
and split alike into data/prepared/preference/{train,val,test}.jsonl (empty without them), their counts under
`preference` in metrics/data.json; unpaired (KTO) answers to one prompt stay together in one split.
"""

from pathlib import Path

from slothline import kinds
from slothline.artifacts import (DATA_METRICS, PREFERENCE_SPLITS_DIR, PREPARED_DIR, SPLITS, atomic_dir, write_json,
                                 write_jsonl)
from slothline.data.records import read_sources
from slothline.data.mixing import mix, split_metrics
from slothline.dvcfile import require_declared, require_model_declared
from slothline.errors import SlothlineError, run_stage
from slothline.models import resolve_model
from slothline.params import load_params


def main() -> None:
    params = load_params()
    data = params.data
    task = kinds.get(params.kind)
    require_declared("prepare", {f"{where}.path": Path(source.path)
                                 for where, source in data.located_sources() if Path(source.path).exists()})
    require_model_declared(params.model.name, ["prepare"])
    processor = task.load_processor(resolve_model(params.model.name), params.model.revision)
    # held-out sources first: dedupe keeps a row's first copy, so a test row that a training source repeats stays
    by_source, report, keys = read_sources(task, params, processor, [*data.test_sources, *data.sources])
    held_out = [row for source in data.test_sources for row in by_source.pop(source.label)]
    splits = mix(by_source, {s.label: s.weight for s in data.sources}, data.total, data.val_fraction,
                 data.test_fraction, data.seed, task.STRATIFY_BY, held_out)
    preference_sources = getattr(params.preference, "sources", [])
    if preference_sources:
        by_source, preference_report, preference_keys = read_sources(task.PREFERENCE, params, processor,
                                                                     preference_sources, "preference")
        try:
            preference_splits = task.PREFERENCE.ungrouped(mix(
                task.PREFERENCE.grouped(by_source), {s.label: s.weight for s in preference_sources},
                params.preference.total, data.val_fraction, data.test_fraction, data.seed))
        except SlothlineError as err:  # mixing names data.total; these rows' total is preference.total
            raise SlothlineError(f"preference data: {str(err).replace('data.total', 'preference.total')}") from None
    else:
        preference_splits = {name: [] for name in SPLITS}

    with atomic_dir(PREPARED_DIR) as staging:
        kind_metrics = task.finish_splits(splits, processor, params, staging)
        for name, records in splits.items():
            write_jsonl(staging / f"{name}.jsonl", records)
        preference_metrics = (task.PREFERENCE.finish_splits(preference_splits, processor, params)
                              if preference_sources else {})
        (staging / PREFERENCE_SPLITS_DIR.name).mkdir()
        for name, records in preference_splits.items():
            write_jsonl(staging / PREFERENCE_SPLITS_DIR.name / f"{name}.jsonl", records)
    metrics = split_metrics(splits, report, keys) | kind_metrics
    if preference_sources:
        metrics["preference"] = split_metrics(preference_splits, preference_report, preference_keys) | preference_metrics
    write_json(DATA_METRICS, metrics)
    print(", ".join(f"{name}: {len(splits[name])} rows" for name in SPLITS), f"-> {PREPARED_DIR}/")
    if preference_sources:
        print("preference " + ", ".join(f"{name}: {len(preference_splits[name])} rows" for name in SPLITS),
              f"-> {PREFERENCE_SPLITS_DIR}/")


if __name__ == "__main__":
    run_stage(main)

"""prepare: read every data source, convert its rows to the model kind's canonical records, mix,
dedupe and split them.

Outs: data/prepared/{train,val,test}.jsonl (canonical records plus what the kind renders from them:
the chat `text`, `prompt` and `reference`), the files the records refer to (a vision model's images,
in data/prepared/images/) and metrics/data.json (counts per split and source, skipped rows,
duplicates, and the kind's statistics such as token lengths and image sizes).
"""

import hashlib
import json
from pathlib import Path

from stages.lib import kinds
from stages.lib.artifacts import PREPARED_DIR, SPLITS
from stages.lib.dvcfile import require_declared
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.formats import RowError
from stages.lib.mixing import dedupe, mix
from stages.lib.models import resolve_model
from stages.lib.outputs import atomic_dir, write_json, write_jsonl
from stages.lib.params import DataParams, Source, load_params
from stages.lib.sources import read_rows

METRICS_FILE = Path("metrics/data.json")


def main() -> None:
    params = load_params()
    data = params.data
    task = kinds.for_params(params)
    for i, source in enumerate(data.sources):
        if source.format not in task.DATA_FORMATS:
            raise SlothlineError(f"data.sources[{i}].format: {source.format} is not a format of {task.NAME} models; "
                                 f"use one of {', '.join(task.DATA_FORMATS)}")
    require_declared("prepare", {f"data.sources[{i}].path": Path(source.path)
                                 for i, source in enumerate(data.sources) if Path(source.path).exists()})
    processor = task.load_processor(resolve_model(params.model.name), params.model.revision)

    by_source, report = {}, {}
    for source in data.sources:
        records, skipped = read_source(task, source, data, processor)
        by_source[source.label] = records
        report[source.label] = {"rows_read": len(records) + skipped, "rows_skipped": skipped}
    if data.dedupe:
        all_records, _ = dedupe([r for records in by_source.values() for r in records])
        for label, records in by_source.items():
            kept = [r for r in all_records if r["source"] == label]
            report[label]["duplicates_removed"] = len(records) - len(kept)
            by_source[label] = kept

    for source in data.sources:
        if not by_source[source.label]:
            raise SlothlineError(no_usable_rows(source, report[source.label]))
    splits = mix(by_source, {s.label: s.weight for s in data.sources}, data.total,
                 data.val_fraction, data.test_fraction, data.seed, task.STRATIFY_BY)

    with atomic_dir(PREPARED_DIR) as staging:
        kind_metrics = task.finish_splits(splits, processor, params, staging)
        for name, records in splits.items():
            write_jsonl(staging / f"{name}.jsonl", records)
    write_json(METRICS_FILE, {**data_metrics(splits, report), **kind_metrics})
    print(", ".join(f"{name}: {len(splits[name])} rows" for name in SPLITS), f"-> {PREPARED_DIR}/")


def read_source(task, source: Source, data: DataParams, processor) -> tuple[list[dict], int]:
    """The kind's records of one source (capped at max_samples) and the count of skipped rows."""
    records, skipped = [], 0
    for where, row in read_rows(source):
        try:
            if isinstance(row, RowError):
                raise row
            canonical, rendered = task.to_record(row, source, data, processor)
        except RowError as err:
            if source.on_error == "skip" and err.skippable:
                skipped += 1
                continue
            raise SlothlineError(
                f"{where}: {err} ({source.format} format). Fix the row, or set `on_error: skip` on this source"
            ) from None
        content_id = hashlib.sha1(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()[:16]
        records.append({"id": content_id, "source": source.label, **canonical, **rendered})
        if len(records) == source.max_samples:
            break
    return records, skipped


def no_usable_rows(source: Source, counts: dict) -> str:
    found = f"{counts['rows_read']} read, {counts['rows_skipped']} skipped"
    if counts.get("duplicates_removed"):
        found += f", {counts['duplicates_removed']} duplicates of rows in other sources"
    fix = "remove the source from data.sources or fill it"
    if counts["rows_skipped"]:
        fix += "; set `on_error: fail` on it to see why its rows are skipped"
    return f"{source.path}: no usable rows ({found}); {fix}"


def data_metrics(splits: dict, report: dict) -> dict:
    """Row counts per split, and per source: read, skipped, duplicates removed, rows in each split."""
    metrics = {f"{name}_rows": len(rows) for name, rows in splits.items()}
    metrics["rows_skipped"] = sum(r["rows_skipped"] for r in report.values())
    metrics["duplicates_removed"] = sum(r.get("duplicates_removed", 0) for r in report.values())
    for label, counts in report.items():
        for name, rows in splits.items():
            counts[f"{name}_rows"] = sum(r["source"] == label for r in rows)
    metrics["sources"] = report
    return metrics


if __name__ == "__main__":
    run_stage(main)

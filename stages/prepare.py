"""prepare: read every data source, convert to canonical chat records, mix, dedupe, split and render.

Outs: data/prepared/{train,val,test}.jsonl (canonical record + rendered `text`, `prompt`,
`reference`) and metrics/data.json (counts per split and source, token lengths, skipped rows).
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from stages.lib.errors import SlothlineError, run_stage
from stages.lib.formats import RowError, to_messages
from stages.lib.mixing import PREPARED_DIR, SPLITS, dedupe, mix
from stages.lib.models import load_tokenizer
from stages.lib.outputs import atomic_dir, write_json, write_jsonl
from stages.lib.params import DataParams, Source, load_params
from stages.lib.sources import read_rows
from stages.lib.templates import render

METRICS_FILE = Path("metrics/data.json")


def main() -> None:
    params = load_params()
    data = params.data
    tokenizer = load_tokenizer(params.model.name, params.model.revision)

    by_source, report = {}, {}
    for source in data.sources:
        records, skipped = read_source(source, data, tokenizer)
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
                 data.val_fraction, data.test_fraction, data.seed)

    with atomic_dir(PREPARED_DIR) as staging:
        for name, records in splits.items():
            write_jsonl(staging / f"{name}.jsonl", records)
    write_json(METRICS_FILE, data_metrics(splits, report, tokenizer, params.model.max_seq_length))
    print(", ".join(f"{name}: {len(splits[name])} rows" for name in SPLITS), f"-> {PREPARED_DIR}/")


def read_source(source: Source, data: DataParams, tokenizer) -> tuple[list[dict], int]:
    """Canonical, rendered records of one source (capped at max_samples) and the count of skipped rows."""
    records, skipped = [], 0
    for where, row in read_rows(source):
        try:
            if isinstance(row, RowError):
                raise row
            messages = to_messages(row, source.format, data.system_prompt)
            rendered = render(messages, tokenizer, source.template, data.enable_thinking)
        except RowError as err:
            if source.on_error == "skip":
                skipped += 1
                continue
            raise SlothlineError(
                f"{where}: {err} ({source.format} format). Fix the row, or set `on_error: skip` on this source"
            ) from None
        content_id = hashlib.sha1(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:16]
        records.append({"id": content_id, "source": source.label, "messages": messages, **rendered})
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


def data_metrics(splits: dict, report: dict, tokenizer, max_seq_length: int) -> dict:
    metrics = {f"{name}_rows": len(rows) for name, rows in splits.items()}
    metrics["rows_skipped"] = sum(r["rows_skipped"] for r in report.values())
    metrics["duplicates_removed"] = sum(r.get("duplicates_removed", 0) for r in report.values())
    for label, counts in report.items():
        for name, rows in splits.items():
            counts[f"{name}_rows"] = sum(r["source"] == label for r in rows)
    metrics["sources"] = report
    metrics["tokens"] = {}
    for name, rows in splits.items():
        if not rows:
            continue
        lengths = np.array([len(ids) for ids in tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]])
        metrics["tokens"][name] = {
            "mean": round(float(lengths.mean()), 1),
            "p50": int(np.percentile(lengths, 50)),
            "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "truncated_rows": int((lengths > max_seq_length).sum()),
        }
    return metrics


if __name__ == "__main__":
    run_stage(main)

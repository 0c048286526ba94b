"""prepare: read every data source, convert to canonical chat records, mix, dedupe, split and render.

Outs: data/prepared/{train,val,test}.jsonl (canonical record + rendered `text`, `prompt`,
`reference`) and metrics/data.json (counts per split and source, token lengths, skipped rows).
Rows whose first answer token lies beyond model.max_seq_length would train on nothing once cut to
that length: they are dropped from train and val, and kept in test, where evaluate scores generations.
Token statistics describe each split before that drop.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from stages.lib.dvcfile import require_declared
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.formats import RowError, to_messages
from stages.lib.mixing import PREPARED_DIR, SPLITS, dedupe, mix
from stages.lib.models import load_tokenizer
from stages.lib.outputs import atomic_dir, write_json, write_jsonl
from stages.lib.params import DataParams, Source, load_params
from stages.lib.sources import read_rows
from stages.lib.templates import answer_cut_off, render, token_lengths

METRICS_FILE = Path("metrics/data.json")


def main() -> None:
    params = load_params()
    data = params.data
    require_declared("prepare", {f"data.sources[{i}].path": Path(source.path)
                                 for i, source in enumerate(data.sources) if Path(source.path).exists()})
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
    max_length = params.model.max_seq_length
    lengths = {name: token_lengths(rows, tokenizer) for name, rows in splits.items()}
    check_answers_fit(lengths["train"], max_length)
    dropped = {}
    for name in ("train", "val"):
        kept = [row for row, (_, start) in zip(splits[name], lengths[name]) if not answer_cut_off(start, max_length)]
        dropped[name], splits[name] = len(splits[name]) - len(kept), kept

    with atomic_dir(PREPARED_DIR) as staging:
        for name, records in splits.items():
            write_jsonl(staging / f"{name}.jsonl", records)
    metrics = data_metrics(splits, report, lengths, dropped, max_length)
    write_json(METRICS_FILE, metrics)
    print(", ".join(f"{name}: {len(splits[name])} rows" for name in SPLITS), f"-> {PREPARED_DIR}/")
    if any(metrics["tokens"][name]["truncated_rows"] for name in metrics["tokens"]):
        print(length_note(metrics["tokens"], max_length))


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


def check_answers_fit(train_lengths: list[tuple[int, int | None]], max_length: int) -> None:
    """Fail when cutting train rows to max_length tokens would leave an answer token in none of them."""
    if not all(answer_cut_off(start, max_length) for _, start in train_lengths):
        return
    starts = [start for _, start in train_lengths]
    raise SlothlineError(
        f"model.max_seq_length: {max_length} tokens leave no answer token in any of the {len(starts)} train rows "
        f"(their prompts take {min(starts)} to {max(starts)} tokens, whole rows up to "
        f"{max(length for length, _ in train_lengths)}); raise model.max_seq_length to at least {max(starts) + 1}"
    )


def data_metrics(splits: dict, report: dict, lengths: dict, dropped: dict, max_length: int) -> dict:
    metrics = {f"{name}_rows": len(rows) for name, rows in splits.items()}
    metrics["rows_skipped"] = sum(r["rows_skipped"] for r in report.values())
    metrics["duplicates_removed"] = sum(r.get("duplicates_removed", 0) for r in report.values())
    for label, counts in report.items():
        for name, rows in splits.items():
            counts[f"{name}_rows"] = sum(r["source"] == label for r in rows)
    metrics["sources"] = report
    metrics["tokens"] = {}
    for name, split_lengths in lengths.items():
        if not split_lengths:
            continue
        tokens = np.array([length for length, _ in split_lengths])
        metrics["tokens"][name] = {
            "mean": round(float(tokens.mean()), 1),
            "p50": int(np.percentile(tokens, 50)),
            "p95": int(np.percentile(tokens, 95)),
            "max": int(tokens.max()),
            "truncated_rows": int((tokens > max_length).sum()),
            "no_answer_rows": sum(answer_cut_off(start, max_length) for _, start in split_lengths),
            "rows_dropped_too_long": dropped.get(name, 0),
        }
    return metrics


def length_note(tokens: dict, max_length: int) -> str:
    """One line on the rows model.max_seq_length cuts: truncated, and without an answer token (dropped or kept)."""
    count = lambda key: sum(split[key] for split in tokens.values())
    of = lambda key, names: ", ".join(f"{name} {tokens[name][key] if name in tokens else 0}" for name in names)
    return (f"model.max_seq_length {max_length}: {count('truncated_rows')} rows are longer and get truncated "
            f"({of('truncated_rows', SPLITS)}); {count('no_answer_rows')} have no answer token within it "
            f"(dropped: {of('rows_dropped_too_long', ('train', 'val'))}; "
            f"kept for evaluate: {of('no_answer_rows', ('test',))})")


if __name__ == "__main__":
    run_stage(main)

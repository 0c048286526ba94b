"""Every data source's rows as the kind's records (prepare): read (`sources`), converted by the kind, counted,
deduplicated across sources. The chat formats are in `formats`, mixing and splits in `mixing`."""

import hashlib
import json

from slothline.data.mixing import content_key, dedupe
from slothline.data.sources import read_rows
from slothline.errors import RowError, SlothlineError


def read_sources(task, params, processor, sources=None, section: str = "data"
                 ) -> tuple[dict[str, list[dict]], dict[str, dict], dict[str, str]]:
    """Each source's records (deduplicated across sources with data.dedupe: a record whose text, normalised
    (mixing.normalised), is that of an earlier one is dropped), its counts (rows read, skipped and duplicates
    removed) and every record's dedupe key by record id. `sources` (those of params `section`) are
    data.sources unless given, and `task` is what converts their rows (the kind, or its preference reader)."""
    sources = params.data.sources if sources is None else sources
    for i, source in enumerate(sources):
        if source.format not in task.FORMATS:
            raise SlothlineError(f"{section}.sources[{i}].format: {source.format} is not a format of {task.NAME} models; "
                                 f"use one of {', '.join(task.FORMATS)}")
    by_source, report, keys = {}, {}, {}
    for source in sources:
        records, skipped = read_source(task, source, params, processor, keys)
        by_source[source.label] = records
        report[source.label] = {"rows_read": len(records) + skipped, "rows_skipped": skipped}
    if params.data.dedupe:
        everything = [r for records in by_source.values() for r in records]
        kept_ids = {id(r) for r in dedupe(everything, key=lambda record: keys[record["id"]])[0]}
        for label, records in by_source.items():
            kept = [r for r in records if id(r) in kept_ids]
            report[label]["duplicates_removed"] = len(records) - len(kept)
            by_source[label] = kept
    for source in sources:
        if not by_source[source.label]:
            raise SlothlineError(no_usable_rows(source, report[source.label]))
    return by_source, report, keys


def read_source(task, source, params, processor, keys: dict[str, str]) -> tuple[list[dict], int]:
    """The kind's records of one source (capped at max_samples) and the count of skipped rows; each record's
    dedupe key (mixing.content_key of its canonical part) goes into `keys` by record id."""
    records, skipped = [], 0
    for where, row in read_rows(source, class_names=getattr(params.data, "labels", None) is None):
        try:
            if isinstance(row, RowError):
                raise row
            canonical, rendered = task.to_record(row, source, params, processor)
        except RowError as err:
            if source.on_error == "skip" and err.skippable:
                skipped += 1
                continue
            skip = ", or set `on_error: skip` on this source" if err.skippable and source.on_error != "skip" else ""
            raise SlothlineError(f"{where}: {err} ({source.format} format). Fix the row{skip}") from None
        content_id = hashlib.sha1(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()[:16]
        keys[content_id] = content_key(canonical)
        records.append({"id": content_id, "source": source.label, **canonical, **rendered})
        if len(records) == source.max_samples:
            break
    return records, skipped


def no_usable_rows(source, counts: dict) -> str:
    found = f"{counts['rows_read']} read, {counts['rows_skipped']} skipped"
    if counts.get("duplicates_removed"):
        found += f", {counts['duplicates_removed']} duplicates of rows in other sources"
    fix = "remove the source or fill it"
    if counts["rows_skipped"]:
        fix += "; set `on_error: fail` on it to see why its rows are skipped"
    return f"{source.path}: no usable rows ({found}); {fix}"

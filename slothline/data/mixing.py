"""Mixing ratios, seeded sampling, dedupe, train/val/test splits and the counts of them metrics/data.json records.

Every random choice draws from a generator seeded by `data.seed` and the source's (or, for the
final shuffle, the split's) name, so the same inputs and params give the same rows in the same order.
"""

import functools
import hashlib
import json
import math
import random
import sys
import unicodedata

from slothline.artifacts import SPLITS
from slothline.errors import SlothlineError


def dedupe(records: list[dict], key=lambda record: record["id"]) -> tuple[list[dict], int]:
    """Drop records whose `key` (by default their id, a hash of their content) was seen before; keep the first."""
    seen, kept = set(), []
    for record in records:
        if key(record) not in seen:
            seen.add(key(record))
            kept.append(record)
    return kept, len(records) - len(kept)


def content_key(canonical) -> str:
    """A hash of a canonical record (messages, or a classifier's text, text_pair and label) with every string in
    it normalised by `normalised`: records that differ only in whitespace or Unicode form share it."""
    def walk(value):
        if isinstance(value, str):
            return normalised(value)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return hashlib.sha1(json.dumps(walk(canonical), ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def normalised(text: str) -> str:
    """`text` as dedupe compares it: Unicode NFKC (a no-break space is a space, full-width letters are letters),
    invisible format characters (zero-width space, soft hyphen, byte order mark) dropped, every run of whitespace
    (line breaks included) one space, none at either end. Case is kept: rows that differ in case may teach it
    (an answer in capitals, `print` vs `Print`, labels like `US`/`us`), while stray whitespace never does."""
    if not text.isascii():  # ASCII is its own NFKC form and has no format characters
        text = unicodedata.normalize("NFKC", text).translate(_format_characters())
    return " ".join(text.split())


@functools.cache
def _format_characters() -> dict[int, None]:
    """A str.translate table deleting every Unicode format character (category Cf)."""
    return {code: None for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"}


def quotas(available: dict[str, int], weights: dict[str, float], total: int | None) -> dict[str, int]:
    """Rows to draw from each source so that the mix follows `weights`.

    With `total`, shares are `total * weight / sum(weights)`, rounded by largest remainder so
    they add up to `total` exactly. Without it, the largest total every source can supply.
    """
    weight_sum = sum(weights.values())
    if total is None:
        total = min(math.floor(available[name] * weight_sum / weights[name] + 1e-9) for name in weights)
    exact = {name: total * weights[name] / weight_sum for name in weights}
    counts = {name: math.floor(share) for name, share in exact.items()}
    by_remainder = sorted(weights, key=lambda name: counts[name] - exact[name])
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    for name, count in counts.items():
        if count > available[name]:
            most = math.floor(available[name] * weight_sum / weights[name])
            raise SlothlineError(
                f"data.total: source {name!r} has {available[name]} usable rows but its weight asks for "
                f"{count} of data.total={total}; lower data.total to at most {most}, lower its weight, "
                "or add rows to the source"
            )
    return counts


def sample(records: list[dict], count: int, seed: int, name: str) -> list[dict]:
    """`count` records drawn without replacement, reproducibly for (seed, source name)."""
    return random.Random(f"{seed}:{name}").sample(records, count)


def split(records: list[dict], val_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
    """Cut already-shuffled records into train/val/test by fraction (val and test rounded)."""
    return cut(records, round(len(records) * val_fraction), round(len(records) * test_fraction))


def stratified_split(records: list[dict], field: str, val_fraction: float,
                     test_fraction: float) -> dict[str, list[dict]]:
    """split() within each class (the value of `field`), so every split keeps the class shares; a class
    whose rounded share of a split asked for is 0 still gets one row there while train keeps one."""
    classes = {}
    for record in records:
        classes.setdefault(record[field], []).append(record)
    splits = {name: [] for name in SPLITS}
    for rows in classes.values():
        n = len(rows)
        n_test = round(n * test_fraction) or int(test_fraction > 0 and n - round(n * val_fraction) > 1)
        n_val = round(n * val_fraction) or int(val_fraction > 0 and n - n_test > 1)
        for name, part in cut(rows, n_val, n_test).items():
            splits[name] += part
    return splits


def cut(records: list[dict], n_val: int, n_test: int) -> dict[str, list[dict]]:
    """The first n_test records for test, the next n_val for val, the rest for train."""
    return {
        "test": records[:n_test],
        "val": records[n_test : n_test + n_val],
        "train": records[n_test + n_val :],
    }


def mix(by_source: dict[str, list[dict]], weights: dict[str, float], total: int | None,
        val_fraction: float, test_fraction: float, seed: int, stratify_by: str | None = None,
        held_out: list[dict] = ()) -> dict[str, list[dict]]:
    """Sample each source to its quota, split each one (so every split keeps the mix; with `stratify_by`,
    each class of the source too), add the `held_out` rows (data.test_sources') to test whole, then shuffle."""
    counts = quotas({name: len(rows) for name, rows in by_source.items()}, weights, total)
    splits = {name: [] for name in SPLITS}
    for name, rows in by_source.items():
        sampled = sample(rows, counts[name], seed, name)
        parts = (stratified_split(sampled, stratify_by, val_fraction, test_fraction) if stratify_by
                 else split(sampled, val_fraction, test_fraction))
        for split_name, part in parts.items():
            splits[split_name].extend(part)
    check_splits(splits, counts, weights, total, {"val": val_fraction, "test": test_fraction})
    splits["test"].extend(held_out)
    for split_name, rows in splits.items():
        random.Random(f"{seed}:{split_name}").shuffle(rows)
    return splits


def check_splits(splits: dict[str, list], counts: dict[str, int], weights: dict[str, float], total: int | None,
                 fractions: dict[str, float]) -> None:
    """Fail when a split asked for (fraction > 0) came out empty, with fixes computed the way mix()
    splits: each source on its own, its share rounded. A fraction of 0 means no such split."""
    rows, weight_sum = sum(counts.values()), sum(weights.values())
    per_source = "" if len(counts) == 1 else (
        " (each source is split on its own: " + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")")
    problems = []
    for name, fraction in fractions.items():
        if fraction == 0 or splits[name]:
            continue
        fixes = []
        # the smallest fraction, in hundredths, whose share of the largest source rounds to 1 row
        raised = (math.floor(50 / max(counts.values()) + 1e-9) + 1) / 100
        if raised + sum(fractions.values()) - fraction < 1:
            fixes.append(f"raise data.{name}_fraction to at least {raised}")
        # the smallest total whose share for the heaviest source rounds to 1 row at this fraction
        needed = math.ceil((math.floor(0.5 / fraction + 1e-9) + 1) * weight_sum / max(weights.values()))
        if total:
            fixes.append(f"raise data.total to at least {needed}")
        elif len(counts) == 1:
            fixes.append(f"add rows (at least {needed})")
        else:
            shares = ", ".join(f"{source} {math.ceil(needed * w / weight_sum - 1e-9)}" for source, w in weights.items())
            fixes.append(f"add rows (at least {shares})")
        if name == "val":
            fixes.append("set data.val_fraction: 0 to train without validation")
        problems.append(f"data.{name}_fraction: {fraction} of {rows} rows gives 0 {name} rows{per_source}; "
                        + ", or ".join(fixes))
    if problems:
        raise SlothlineError("\n".join(problems))
    if not splits["train"]:
        raise SlothlineError(
            f"data: the train split is empty ({rows} rows: {len(splits['val'])} val, {len(splits['test'])} test); "
            "lower data.val_fraction or data.test_fraction, or add rows"
        )


def split_metrics(splits: dict, report: dict, keys: dict) -> dict:
    """Rows per split, per source and split, skipped and duplicate rows, and test rows also in train."""
    in_train = {keys[r["id"]] for r in splits["train"]}
    for label, source_counts in report.items():
        source_counts.update({f"{name}_rows": sum(r["source"] == label for r in rows) for name, rows in splits.items()})
    return {**{f"{name}_rows": len(rows) for name, rows in splits.items()},
            "rows_skipped": sum(r["rows_skipped"] for r in report.values()),
            "duplicates_removed": sum(r.get("duplicates_removed", 0) for r in report.values()),
            "test_rows_in_train": sum(keys[r["id"]] in in_train for r in splits["test"]), "sources": report}

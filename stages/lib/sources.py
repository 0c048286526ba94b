"""Read the rows of a data source: JSONL, JSON array, CSV, Parquet, a `save_to_disk` directory or a hub id.

`read_rows` yields `(where, row)` pairs, `where` being "file:line" (or "file: row N") so that every
error can point at the exact row; a JSONL line that does not parse comes as a RowError in place of the row.
"""

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from stages.lib.errors import SlothlineError
from stages.lib.formats import RowError
from stages.lib.params import Source

FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


def read_rows(source: Source) -> Iterator[tuple[str, object]]:
    path = Path(source.path)
    if path.is_dir():
        yield from _dataset_rows(source.path, _load_from_disk(path, source.split))
    elif path.is_file():
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
        if path.suffix not in readers:
            raise SlothlineError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(sorted(FILE_SUFFIXES))}"
            )
        yield from readers[path.suffix](path)
    elif _looks_like_hub_id(source.path):
        yield from _dataset_rows(source.path, _load_hub(source.path, source.split))
    else:
        raise SlothlineError(
            f"{path}: no such file or directory (data.sources path); fix the path in params.yaml "
            "or regenerate the bundled samples with `python data/generate_raw.py`"
        )


def _jsonl_rows(path: Path):
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as err:
                yield f"{path}:{number}", RowError(f"malformed JSON ({err.msg} at column {err.colno})")


def _json_rows(path: Path):
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SlothlineError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); fix the file")
    if not isinstance(rows, list):
        raise SlothlineError(f"{path}: expected a JSON array of rows; for one object per line use .jsonl")
    for number, row in enumerate(rows, start=1):
        yield f"{path}: row {number}", row


def _csv_rows(path: Path):
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"{path}: row {number}", row


def _dataset_rows(name: str, dataset):
    for number, row in enumerate(dataset, start=1):
        yield f"{name}: row {number}", row


def _load_from_disk(path: Path, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise SlothlineError(f"{path}: a directory, but not one written by datasets' save_to_disk")
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SlothlineError(f"{path}: no split {split!r}; set the source's split to one of {list(loaded)}")
        return loaded[split]
    return loaded


def _load_hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise SlothlineError(
            f"data.sources path {name!r}: not a local file, and loading it as a hub dataset failed "
            f"({err.__class__.__name__}: {err}); check the path, or the network and the dataset id"
        ) from None


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and Path(name).suffix not in FILE_SUFFIXES

"""Read the rows of a data source: JSONL, JSON array, CSV, Parquet, a `save_to_disk` directory or a hub id.

`read_rows` yields `(where, row)` pairs, `where` being "file:line" (or "file: row N") so that every
error can point at the exact row; a JSONL line that does not parse, or a CSV row whose cells do not match its
header, comes as a RowError in place of the row. Text files must be UTF-8 (a byte order mark, as Excel writes,
is fine); JSONL splits on "\n" only.
"""

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from slothline.errors import RowError, SlothlineError
from slothline.params import Source

FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
BUNDLED_DIR = Path("data/raw")  # the sample data the project ships
DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")  # what save_to_disk writes
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape of half a UTF-16 surrogate pair


def read_rows(source: Source, class_names: bool = True) -> Iterator[tuple[str, object]]:
    """Each row of the source with where it was read; `class_names`: a dataset's ClassLabel numbers as their names
    (off where data.labels gives the classes, which the numbers then index)."""
    path = Path(source.path)
    if source.config is not None and path.exists():
        raise SlothlineError(f"{path}: a local source takes no `config` (a hub dataset's configuration); remove it")
    if path.is_dir():
        yield from _dataset_rows(source.path, _load_from_disk(path, source.split), class_names)
    elif path.is_file():
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
        if path.suffix not in readers:
            raise SlothlineError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(sorted(FILE_SUFFIXES))}"
            )
        yield from readers[path.suffix](path)
    elif _looks_like_hub_id(source.path):
        yield from _dataset_rows(source.path, _load_hub(source.path, source.config, source.split), class_names)
    else:
        raise SlothlineError(_missing(path))


def _missing(path: Path) -> str:
    """Why a source path does not exist, and the fix: a path inside the project may be a file that a queued or
    --temp experiment does not have, since its copy of the project holds only what git or DVC tracks."""
    message = f"{path}: no such file or directory (a data source path); fix the path in params.yaml"
    if any(wildcard in str(path) for wildcard in "*?["):
        return (f"{path}: no such file or directory; a data source path names one file or directory, not a pattern: "
                "list each file as a source of its own, or save them as one dataset (datasets' save_to_disk)")
    if path.is_absolute() or ".." in path.parts:
        return message
    tracked = ("a queued or --temp experiment (`dvc exp run --queue`, `--temp`) gets only the files git or DVC "
               f"tracks: `git add {path}` (or, for a large file, `dvc add {path}` and `git add {path}.dvc`) and run "
               "the experiment again")
    project = os.environ.get("DVC_ROOT")  # dvc sets it to the project's root, also in an experiment's copy
    if project and Path(project).resolve() != Path.cwd().resolve() and (Path(project) / path).exists():
        return f"{path}: in the project ({project}) but not in this experiment's copy of it; {tracked}"
    if path.parent == BUNDLED_DIR:
        message += ("; to regenerate the bundled samples run `python data/generate_raw.py` (chat formats) or "
                    "`python data/generate_classification.py` (reviews.jsonl)")
    return f"{message}; if the file is in your project, {tracked}"


def _jsonl_rows(path: Path):
    with path.open("rb") as lines:  # bytes split on "\n" only: U+2028 or U+0085 inside a string is legal JSON
        for number, line in enumerate(lines, start=1):
            line = _decode(path, line, number).rstrip("\r\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield f"{path}:{number}", _unicode_checked(row) if SURROGATE_ESCAPE.search(line) else row
            except json.JSONDecodeError as err:
                yield f"{path}:{number}", RowError(f"malformed JSON ({_json_problem(err)})")


def _json_rows(path: Path):
    text = _decode(path, path.read_bytes())
    if not text.strip():
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        fix = "fix the file"
        if err.msg == "Extra data" and _is_json(text.split("\n", 1)[0]):
            fix = "this looks like JSON Lines (one JSON object per line): rename the file to .jsonl"
        raise SlothlineError(f"{path}:{err.lineno}: malformed JSON ({_json_problem(err)}); {fix}") from None
    if not isinstance(rows, list):
        raise SlothlineError(f"{path}: expected a JSON array of rows; for one object per line use .jsonl")
    escapes = SURROGATE_ESCAPE.search(text)
    for number, row in enumerate(rows, start=1):
        yield f"{path}: row {number}", _unicode_checked(row) if escapes else row


def _unicode_checked(row):
    """`row`, or a RowError where a string in it holds half of a UTF-16 surrogate pair (JSON's escape "\\ud83d"
    alone: an emoji cut in two, as scraped chat dumps hold), which no UTF-8 file can store."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        return RowError(f"a string holds {err.object[err.start:err.end]!r}, half of a UTF-16 surrogate pair (an emoji "
                        "or other character cut in two), which is not text; fix or drop the character")
    return row


def _csv_rows(path: Path):
    """Rows under the file's header, each where its first line is. A row with more cells than the header (an
    unquoted comma in a field) or fewer (a missing comma, a line break in an unquoted field) comes as a RowError,
    as does a row the csv module cannot parse. A quote that is never closed, which would read the rest of the
    file as one field, fails, as does one closed rows later where every line it spans looks like a row (two
    lines so, or the answer of a two-column file: a note)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long document in one cell is data, not an error
    text = _decode(path, path.read_bytes())
    lines = io.StringIO(text, newline="").readlines()  # the physical lines, as the reader numbers them
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = None
    look_like_rows = []  # (first, last) lines of two-line rows whose lines would each be a row of their own
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            if look_like_rows:
                print(_stray_quote_note(path, look_like_rows, len(header)))
            return
        except csv.Error as err:
            if str(err) == "unexpected end of data":  # strict: the end of the file inside a quoted field
                raise SlothlineError(
                    f"{path}:{start}: a quote in the row starting on this line is never closed, so lines {start}-"
                    f"{reader.line_num} (the rest of the file) would read as one field; close the quote, or write a "
                    'quote inside a field as two ("") and quote the whole field'
                ) from None
            if header is None:
                raise SlothlineError(f"{path}:{start}: malformed CSV header ({err}); fix the file") from None
            problem = ('a field that starts with a quote must end with one before the next comma: quote the whole '
                       'field and write each quote inside it as two ("")')
            if reader.line_num != start:  # a quote opened here ran over other rows: skipping would lose them too
                raise SlothlineError(f"{path}:{start}: malformed CSV ({err} on line {reader.line_num}); {problem}. "
                                     f"Lines {start}-{reader.line_num} read as one field, so this cannot be skipped: "
                                     f"a stray quote on line {start} is the likely cause") from None
            yield f"{path}:{start}", RowError(f"malformed CSV ({err}); {problem}")
            continue
        if not cells:  # a blank line
            continue
        if header is None:
            header = cells
            continue
        end = reader.line_num
        if end > start and _each_a_row(lines[start - 1 : end], len(header)):
            if end - start >= 2 and not _multiline_answer(cells, len(header)):
                raise SlothlineError(
                    f"{path}:{start}: lines {start}-{end} read as one row, because a quote opened on line {start} "
                    f"closes only on line {end}, yet each of those lines has the header's {len(header)} cells as a "
                    "row of its own would; remove the stray quote, or write a quote inside a field as two (\"\") "
                    "and quote the whole field (a field that really spans these lines reads as it is from JSONL)")
            look_like_rows.append((start, end))
        yield f"{path}:{start}", _cells_row(cells, header)


def _each_a_row(lines: list[str], width: int) -> bool:
    """Whether each of `lines`, its quotes read as plain characters, has `width` cells (width 2 or more): the
    mark of rows swallowed by a stray quote rather than of one field spanning lines."""
    return width > 1 and all(len(next(csv.reader([line.rstrip("\r\n")], quoting=csv.QUOTE_NONE))) == width
                             for line in lines)


def _multiline_answer(cells: list[str], width: int) -> bool:
    """Whether a row of a two-column file (question, answer) spans lines in its last cell only: an answer over
    lines, where any line of prose with one comma looks like a row of two cells."""
    return width == 2 and "\n" in cells[-1] and not any("\n" in cell for cell in cells[:-1])


def _stray_quote_note(path: Path, spans: list[tuple[int, int]], width: int) -> str:
    shown = ", ".join(f"{first}-{last}" for first, last in spans[:5]) + (", ..." if len(spans) > 5 else "")
    return (f"note: {path}: {len(spans)} row(s) span lines that could each be a row of {width} cells (lines "
            f"{shown}): a quoted field holds a line break there; if a quote is stray instead, the lines after it are "
            "read into that field: remove the quote, or write it as two (\"\") inside a quoted field")


def _cells_row(cells: list[str], header: list[str]):
    """The row of `cells` under `header`, or a RowError when cells would be lost or missing (blank extra cells,
    as a trailing comma leaves, are ignored)."""
    columns = f"{len(cells)} cell{'s' * (len(cells) != 1)} where the header has {len(header)} ({', '.join(header)})"
    if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header):]):
        extra = ", ".join(repr(cell[:40]) for cell in cells[len(header):][:3])
        return RowError(
            f"{columns}: the cells after {header[-1]!r} ({extra}) belong to no column; "
            'quote a field that contains a comma ("Four, obviously"), or remove the stray comma')
    if len(cells) < len(header):
        missing = ", ".join(map(repr, header[len(cells):]))
        return RowError(
            f"{columns}: no cell for {missing}; add the missing comma(s), or quote a field "
            "that spans several lines")
    return dict(zip(header, cells))


def _parquet_rows(path: Path):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise SlothlineError(f"{path}: not a readable Parquet file ({err}); the file is damaged or not Parquet: "
                             "write it again (e.g. pandas' DataFrame.to_parquet)") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {number}", row


def _decode(path: Path, data: bytes, line: int = 1) -> str:
    """`data` (starting at `line` of `path`) as UTF-8 text, without a byte order mark; a clear error
    naming the line when it is not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SlothlineError(f"{path}: UTF-16 text (it starts with UTF-16's byte order mark; Windows PowerShell and "
                             "Excel's Unicode Text write it); re-save the file as UTF-8 (`iconv -f utf-16 -t utf-8`)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line += data.count(b"\n", 0, err.start)
        raise SlothlineError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#x}; Windows-1252 or Latin-1?); re-save the file "
            "as UTF-8 (Excel: Save As CSV UTF-8; or `iconv -f cp1252 -t utf-8`)"
        ) from None


def _json_problem(err: json.JSONDecodeError) -> str:
    return f"{err.msg.removesuffix(' at')} at column {err.colno}"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _dataset_rows(name: str, dataset, class_names: bool = True):
    """Each row; with `class_names`, its `ClassLabel` columns' numbers as their class names (as imdb's and ag_news'
    labels are stored; -1, no label, stays a number)."""
    from datasets import ClassLabel

    named = {column: feature for column, feature in dataset.features.items()
             if class_names and isinstance(feature, ClassLabel)}
    for number, row in enumerate(_undecoded(dataset), start=1):
        for column, feature in named.items():
            if isinstance(row[column], int) and 0 <= row[column] < feature.num_classes:
                row[column] = feature.int2str(row[column])
        yield f"{name}: row {number}", row


def _undecoded(dataset):
    """`dataset` with its media (images, audio, ...) as stored, `{"bytes", "path"}`, as a Parquet file holds them,
    rather than decoded into PIL images: prepare reads the bytes itself. Cast in memory: a cast on disk would write a
    cache file into the data's folder."""
    features = dataset.features.copy()
    if not any(_decoding_off(feature) for feature in features.values()):
        return dataset
    return dataset.cast(features, keep_in_memory=True)


def _decoding_off(feature) -> bool:
    """Set every media feature in `feature` (a column's, nested in lists and dicts) not to decode; whether any did.
    Json columns keep decoding: their values are the data."""
    from datasets import Audio, Image, Video

    if isinstance(feature, (Audio, Image, Video)):
        decoded, feature.decode = feature.decode, False
        return decoded
    inner = feature.values() if isinstance(feature, dict) else [getattr(feature, "feature", None)]
    return any([_decoding_off(child) for child in inner if child is not None])


def _load_from_disk(path: Path, split: str):
    import datasets

    if not any((path / name).is_file() for name in DATASET_FILES):
        files = sorted(str(file) for file in path.iterdir() if file.suffix in FILE_SUFFIXES)[:5]
        where = f"a data file in it ({', '.join(files)})" if files else "a data file or a save_to_disk directory"
        raise SlothlineError(f"{path}: a directory, but not a dataset written by datasets' save_to_disk; "
                             f"point the source's path at {where}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged directory raises many types (JSON, Arrow, missing files)
        raise SlothlineError(f"{path}: a save_to_disk directory that cannot be loaded ({err.__class__.__name__}: "
                             f"{err}); write it again with save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SlothlineError(f"{path}: no split {split!r}; set the source's split to one of {list(loaded)}")
        return loaded[split]
    return loaded


def _load_hub(name: str, config: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise SlothlineError(
            f"data.sources path {name!r}: not a local file, and loading it as a hub dataset failed "
            f"({err.__class__.__name__}: {err}); check the path, or the network and the dataset id"
        ) from None


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and Path(name).suffix not in FILE_SUFFIXES

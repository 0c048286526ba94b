"""Put on PYTHONPATH (with SLOTHLINE_IMPORT_LOG set) by the dependency tests: every Python process appends,
at exit, the project files it imported (relative to its working directory) to that JSON Lines file."""

import atexit
import json
import os
import sys
from pathlib import Path


def _record() -> None:
    root = Path.cwd().resolve()
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).is_absolute() and Path(file).resolve().is_relative_to(root):
            files.add(str(Path(file).resolve().relative_to(root)))
    with open(os.environ["SLOTHLINE_IMPORT_LOG"], "a") as log:
        log.write(json.dumps({"argv": sys.argv, "files": sorted(files)}) + "\n")


if os.environ.get("SLOTHLINE_IMPORT_LOG"):
    atexit.register(_record)

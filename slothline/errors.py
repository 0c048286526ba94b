"""The errors a user can fix, and the wrapper that turns them into a clean exit."""

import sys
from collections.abc import Callable


class SlothlineError(Exception):
    """A problem with the user's params, data or environment; the message names the place and the fix."""


class RowError(ValueError):
    """A data row that cannot be converted; the message names the field and the fix (prepare adds file and
    line). A source's `on_error: skip` skips it unless `skippable` is False (a problem of the project, not
    of the row, such as a file outside prepare's dependencies)."""

    def __init__(self, message: str, skippable: bool = True):
        super().__init__(message)
        self.skippable = skippable


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a SlothlineError prints one clear message and exits with status 2."""
    try:
        main()
    except SlothlineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

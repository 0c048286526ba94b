"""One error type for every problem a user can fix, and the wrapper that turns it into a clean exit."""

import sys
from collections.abc import Callable


class SlothlineError(Exception):
    """A problem with the user's params, data or environment; the message names the place and the fix."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a SlothlineError prints one clear message and exits with status 2."""
    try:
        main()
    except SlothlineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

"""User-facing errors: one sentence that says what to do next, printed without a traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """An error the user caused or can fix (bad input, missing file, no network)."""


class DatasetUnavailable(UserError):
    """A dataset could not be reached (no network, no local copy)."""


DATASET_UNAVAILABLE_EXIT = 4  # the pipeline reads it to suggest --stand-in-data


def cli_main(fn):
    """Run a script's main(); a UserError becomes one line on stderr and exit status 2 (4 when a dataset could
    not be reached)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(DATASET_UNAVAILABLE_EXIT if isinstance(exc, DatasetUnavailable) else 2)
        except KeyboardInterrupt:  # the leading newline ends a progress bar's line, so the sentence stands alone
            print("\ninterrupted: re-run the same command with --resume to continue from the last saved state.",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper

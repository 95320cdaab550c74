"""User-facing errors: one line that says what to do, exit code 1, no traceback.

A student who mistypes a path should read one sentence that tells them the fix,
not forty lines of diffusers internals. Code anywhere in the repo raises
`UserError` for such cases; `run_script` turns it into that one line.
"""

import sys


class UserError(Exception):
    """A problem the user can fix (a path, a flag, a missing download)."""


def run_script(main, argv=None):
    """Run `main(argv)`; print a UserError as one line and exit with code 1."""
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)

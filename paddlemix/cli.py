"""What the example scripts share: how their entry point reports a user's mistake.

A missing path, a folder of the wrong kind or a bad value (``USER_ERRORS``) ends a script with one ``error: ...``
line and exit status 1 instead of a traceback; anything else is a bug and keeps its traceback.
"""

import sys

USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError)


def run(main):
    """``sys.exit(main())``, a user error turned into one ``error: ...`` line."""
    try:
        sys.exit(main())
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")

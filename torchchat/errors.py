"""One exception type for everything the user can fix.

Library code raises UserError with a one-line message; the command line
(`torchchat/cli.py`) prints it as `error: <message>` and exits non-zero, so a
user never sees a traceback for bad input.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

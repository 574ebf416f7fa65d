"""One exception type for everything the user can fix, and the one line it shows.

Library code raises UserError with a one-line message; the command line
(`torchchat/cli.py`) prints it as `error: <message>` and exits non-zero, so a
user never sees a traceback for bad input.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(e: BaseException) -> str:
    """The first line of a library's exception message (at most 200 characters), for a UserError."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]

"""The one exception type the command line turns into a one-line message (no traceback without --verbose).

Raise `UserError` for anything the user can fix: bad config keys, malformed data files, impossible
weight settings. Its message names the file, line or key and says what to do.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line."""

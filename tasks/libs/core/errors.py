"""The one exception family a user's mistake raises: its message is one line that says what to fix.

Thin task modules turn a UserError into `Exit(1)` with that line (see core.cli); anything
else is our bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix; the message says what and how, in one line."""


class ConfigError(UserError):
    """A wrong setting; the message names the file or variable that supplied it."""

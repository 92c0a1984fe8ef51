"""The one exception type for mistakes in what a user gave hsd: a recipe, a data file, an argument, a busy
output directory. `hsd` prints its message as one line and exits 2 without a traceback (`hsd --debug ...`
shows it); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message names the file, row, field or value and what is allowed."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""

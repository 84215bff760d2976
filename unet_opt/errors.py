"""The one exception type for user mistakes: the CLI prints it as a single `error:` line, exit 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""

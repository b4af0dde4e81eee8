"""The one exception type for user mistakes: the CLI prints it as one line."""


class UserError(Exception):
    """Bad input from the user (a name, a path, a setting): reported, never a traceback."""

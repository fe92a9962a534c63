"""The one exception type for bad user input: the CLI prints its message, never a traceback."""


class DeepLabError(ValueError):
    """Bad input (a file, a flag, an array) described in words a user can act on.

    Subclasses ValueError so that library callers can catch either.
    """

"""The one exception type for bad user input: the CLI prints its message, never a traceback."""


class DeepLabError(ValueError):
    """Bad input (a file, a flag, an array) described in words a user can act on.

    Subclasses ValueError so that library callers can catch either.
    """


def describe_failure(name: object, exc: BaseException) -> str:
    """One line for an item of a batch that failed: what went wrong, naming the item.

    Used by every batch command (``predict``, ``crf --image-dir``) to report a bad item before
    going on with the rest.
    """
    if isinstance(exc, DeepLabError):
        msg = str(exc)
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        msg = f"{where}{exc.strerror or exc}"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return msg if str(name) in msg else f"{name}: {msg}"

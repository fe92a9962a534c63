"""The one exception type for bad user input: the CLI prints its message, never a traceback."""

import re

# torch's DataLoader re-raises a worker's exception as the same type with the worker's whole
# traceback as its message; the original message is the traceback's last entry
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_WORKER_ORIGINAL = re.compile(r"^(?:[\w.]+\.)?DeepLabError: (.*)$", re.MULTILINE)


class DeepLabError(ValueError):
    """Bad input (a file, a flag, an array) described in words a user can act on.

    Subclasses ValueError so that library callers can catch either.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP of a command that turns them into an exception (``train``), taken like
    Ctrl-C: the same cleanup runs; the CLI ends in one line with status 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` to show a user: a DeepLabError raised in a DataLoader worker
    process comes back wrapped in the worker's traceback; this is its own one line again."""
    msg = str(exc)
    if isinstance(exc, DeepLabError) and _WORKER_WRAPPED.match(msg):
        found = _WORKER_ORIGINAL.findall(msg)
        if found:
            return found[-1].strip()
    return msg


def os_error_message(exc: OSError, unnamed: str | None = "a file") -> str:
    """One line for a file the command could not read or write: the file, then the problem
    (``unnamed`` stands for the file when the error names none; None leaves it out)."""
    where = exc.filename if exc.filename is not None else unnamed
    problem = exc.strerror or str(exc)
    return problem if where is None else f"{where}: {problem}"


def describe_failure(name: object, exc: BaseException) -> str:
    """One line for an item of a batch that failed: what went wrong, naming the item.

    Used by every batch command (``predict``, ``crf --image-dir``) to report a bad item before
    going on with the rest.
    """
    if isinstance(exc, DeepLabError):
        msg = error_message(exc)
    elif isinstance(exc, OSError):
        msg = os_error_message(exc, unnamed=None)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return msg if str(name) in msg else f"{name}: {msg}"

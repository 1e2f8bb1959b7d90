"""labkit's error kinds, and the one place that turns them into a one-line message.

Every command (`labkit ...`, `pretrain/run.py`) runs through `one_line_errors`: a bad config, a
missing or corrupted data set, checkpoint or tokenizer, a full disk or Ctrl-C print one line that
names the file or key and exit with a fixed code; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class LabkitError(Exception):
    """Base of the errors labkit raises on bad input: the message is meant for the user."""


class ConfigError(LabkitError, ValueError):
    """A config key is unknown, mistyped or out of range (the message names the key)."""


class DataError(LabkitError, ValueError):
    """A data set is missing, incomplete or corrupted (the message names the file)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set (or one of its files) does not exist; the message names the command that
    builds it."""


class TokenizerError(LabkitError, ValueError):
    """A tokenizer file cannot be read (the message names the file)."""


class RunDirError(LabkitError, ValueError):
    """A run directory cannot be used as asked (locked, another run's, a changed config)."""


class CheckpointError(LabkitError, RuntimeError):
    """A checkpoint is missing, incomplete or corrupted (the message names the file)."""


class OutputExistsError(LabkitError, FileExistsError):
    """An output path holds something labkit did not write; nothing was touched."""


EXIT_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def describe(err: BaseException) -> str:
    """One line for an error: its message, with a full disk named as such."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return f"no space left on the device{where}: free some space, then resume or rerun"
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):  # str(KeyError('x')) is "'x'": say what it is
        text = f"missing key {text}"
    return " ".join(text.split())  # one line, whatever the message held


def one_line_errors(prog: str, fn: Callable[[], int], debug: bool = False) -> int:
    """Run `fn`; map labkit's errors, OSError and Ctrl-C to one line on stderr and an exit code.
    With `debug` (or LABKIT_DEBUG=1) the traceback is shown instead."""
    debug = debug or os.environ.get("LABKIT_DEBUG") == "1"
    try:
        return fn()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except (LabkitError, ValueError, KeyError, OSError) as err:
        if debug:
            raise
        print(f"{prog}: error: {describe(err)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "EXIT_ERROR",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "LabkitError",
    "OutputExistsError",
    "RunDirError",
    "TokenizerError",
    "describe",
    "one_line_errors",
]

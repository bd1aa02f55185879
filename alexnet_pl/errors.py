"""Errors the user caused (a path, a number, a file), and how every command reports them: the
message alone, without a traceback, and a non-zero exit status; `HYDRA_FULL_ERROR=1` shows the
traceback as well, as Hydra does for its own errors.

A mistake in the code stays an ordinary exception with its traceback: only what is raised as a
UserError is reported this way. UserError subclasses ValueError and MissingInput
FileNotFoundError, so callers (and tests) that catch those keep working."""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

from hydra.errors import InstantiationException

P = ParamSpec("P")
R = TypeVar("R")
EXIT_STATUS = 1  # what Hydra and the interpreter use for an uncaught error


class UserError(ValueError):
    """A value the user gave that cannot work; the message names it and says what to do."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named is not there, or not what was expected."""


def _user_error_in(error: BaseException) -> UserError | None:
    """The UserError itself, or the one a config object raised while hydra.utils.instantiate was
    building it (Hydra wraps it in an InstantiationException)."""
    if isinstance(error, UserError):
        return error
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, UserError):
        return error.__cause__
    return None


@contextmanager
def reported_as_user_errors() -> Iterator[None]:
    """Turns a UserError into `error: <message>` on stderr and SystemExit(1). Under DDP every rank
    runs the command, so a rank that fails this way exits non-zero like any failed rank: Lightning
    then stops the other ranks and the launcher reports the failure."""
    try:
        yield
    except Exception as error:
        user_error = _user_error_in(error)
        # Hydra's own switch for tracebacks (hydra/_internal/utils.py run_and_report).
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None


def report_user_errors(main: Callable[P, R]) -> Callable[P, R]:
    """The decorator form of reported_as_user_errors, for an entry point's main()."""

    @wraps(main)
    def reporting(*args: P.args, **kwargs: P.kwargs) -> R:
        with reported_as_user_errors():
            return main(*args, **kwargs)

    return reporting

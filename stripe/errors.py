"""The errors a user can fix: one base class, :class:`StripeError`.

The ``stripe`` command prints a :class:`StripeError` as one line on stderr and exits with status 2;
any other exception is a bug and keeps its traceback (exit 1), so it can be reported. Each subclass
also derives from the matching built-in exception, so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class StripeError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""


class UserError(StripeError, ValueError):
    """A bad option, name, value or combination, or a file whose content is not what it should be."""


class NotFoundError(StripeError, FileNotFoundError):
    """A file or folder that should exist does not."""


class RefusedError(StripeError, PermissionError):
    """stripe will not do it: it would replace or delete what it did not write, or damage what is there."""


class EnvironmentProblem(StripeError, RuntimeError):
    """What the machine lacks (a GPU, a package, disk space) for the asked work."""


class MissingEntryError(StripeError, KeyError):
    """An epoch, tap or tensor that a recording or table does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0]) if self.args else ""


class NotAFolderError(StripeError, NotADirectoryError):
    """A path that should be a folder is a file."""

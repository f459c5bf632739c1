"""Errors that loratune raises for bad input.

Every class here is a user error: the CLI prints ``error: <message>`` on one line and exits with
code 2, with no traceback. Each message names the problem and the fix.
"""

from __future__ import annotations


class LoratuneError(Exception):
    """Base class: a user error with a one-line message that names the fix."""

    exit_code = 2


class TargetModulesError(LoratuneError):
    """``target_modules`` matched no Linear module of the model."""


class AdapterShapeError(LoratuneError):
    """An adapter tensor's shape does not fit the model's module."""


class UnknownAdapterError(LoratuneError, KeyError):
    """An adapter name that the model does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AdapterFileError(LoratuneError):
    """An adapter folder with missing, corrupt or unsafe files."""


class AdapterNameError(LoratuneError, ValueError):
    """An adapter name that is not a safe identifier."""


class DataError(LoratuneError):
    """A dataset that cannot be used as asked (columns, labels, files)."""


class ModelNotFoundError(LoratuneError):
    """A model that cannot be found or loaded."""


class RunError(LoratuneError):
    """A run that cannot start or resume as asked (output folder, checkpoints)."""


class PeerLost(LoratuneError):
    """A process of a distributed run lost the others: one of them failed, or a collective timed out."""

    exit_code = 1


class Interrupted(LoratuneError):
    """Training stopped by Ctrl-C after saving a checkpoint; ``--resume`` continues it."""

    exit_code = 130


class AdapterUnavailableError(UnknownAdapterError):
    """A registry adapter that was unloaded on purpose: it serves again once loaded again."""

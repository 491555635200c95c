"""The toolkit's own user errors: the command line turns these into one-line messages.

Anything else (a bug in a method, a CUDA failure) keeps its traceback, so it can be reported and fixed.
Each error also subclasses the built-in exception it used to be (ValueError, FileExistsError ...), so
code that caught those keeps working.
"""
from __future__ import annotations


class ShiftlabError(Exception):
    """A user-facing error: bad config, data, weights or run folder. The message says what to do."""


class RunFolderError(ShiftlabError):
    """The run folder cannot be used as asked."""


class RunExistsError(RunFolderError, FileExistsError):
    """The run folder holds a started run, and neither --resume nor --overwrite was given."""


class NothingToResumeError(RunFolderError, FileNotFoundError):
    """--resume was asked for a run that has no checkpoint."""


class TrainingDivergedError(ShiftlabError, FloatingPointError):
    """A loss or a weight became NaN or infinite: the run stops, naming the step (lower the learning rate)."""

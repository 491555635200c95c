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
    """A loss, an evaluation loss or the weights became NaN or infinite; the last finite checkpoint is kept."""


class NonFiniteWeightsError(ShiftlabError, ValueError):
    """A weights file or checkpoint holds NaN or infinite tensors: loading it would only spread them."""


class RunModelError(ShiftlabError, ValueError):
    """A run folder or checkpoint that cannot be loaded as a trained model (``load_run``, predict, export)."""


class InferenceDataError(RunModelError, FileNotFoundError):
    """A method computes its inference state from the run's images (AdaBN, Gaussian matching) and they cannot be read."""


class PredictInputError(ShiftlabError, ValueError):
    """Images given to ``predict`` that cannot be used: the message names the file, folder or value."""


class ExportError(ShiftlabError, ValueError):
    """A trained model that cannot be exported as asked (format, missing package, inference held in Python)."""

"""Every user error of the toolkit, in one place: the command line turns these into one-line messages.

Anything else (a bug in a method, a CUDA failure) keeps its traceback, so it can be reported and fixed.
This module imports nothing of shiftlab, so any module (``nn``, ``losses``, ``data`` ...) can raise these
without importing the layers above it. Where an error is also a built-in exception (ValueError,
FileExistsError ...), that is what it is: a bad value, a file that exists.
"""

from __future__ import annotations


class ShiftlabError(Exception):
    """A user-facing error: bad config, data, weights or run folder. The message says what to do."""


# --------------------------------------------------------------------------------------------------
# configuration


class ConfigError(ShiftlabError, ValueError):
    """A bad config file, key or value; the message names it and lists the valid choices."""


# --------------------------------------------------------------------------------------------------
# data


class DataError(ShiftlabError, ValueError):
    """Bad data on disk or a bad name: the message names the file, folder or key at fault."""


class Uncacheable(DataError):
    """A dataset whose identity the decoded cache cannot establish (an unknown dataset class)."""


class DownloadError(DataError):
    """A download, checksum or extraction failed; the message names the URL, file or archive member."""


# --------------------------------------------------------------------------------------------------
# models and methods


class ModelError(ShiftlabError, ValueError):
    """A model that does not exist or cannot be split as asked; the message names it."""


class WeightsError(ShiftlabError, RuntimeError):
    """Weights could not be had; the message says how to provide them."""


class AdapterError(ShiftlabError):
    """A run folder or file that holds no usable adapter; the message names the path."""


class AdaptImagesError(ShiftlabError):
    """Bad arguments of ``adapt-images``; the message names the path or value."""


# --------------------------------------------------------------------------------------------------
# sweeps, model selection and reports


class SweepError(ShiftlabError):
    """A sweep file that cannot be expanded; the message names the file and the key."""


class SelectionError(ShiftlabError, ValueError):
    """Runs that cannot be grouped or selected as asked; the message names the key or rule."""


class ReportError(ShiftlabError, ValueError):
    """A report that cannot be made as asked (no runs, unknown key, bad reference file); the message says why."""


# --------------------------------------------------------------------------------------------------
# run folders and training


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


class MissingExtraError(ShiftlabError, ImportError):
    """A command needs an optional dependency that is not installed; the message names the extra to install."""


class RunModelError(ShiftlabError, ValueError):
    """A run folder or checkpoint that cannot be loaded as a trained model (``load_run``, predict, export)."""


class InferenceDataError(RunModelError, FileNotFoundError):
    """A method computes its inference state from the run's images (AdaBN, Gaussian matching) and they cannot be read."""


class PredictInputError(ShiftlabError, ValueError):
    """Images given to ``predict`` that cannot be used: the message names the file, folder or value."""


class ExportError(ShiftlabError, ValueError):
    """A trained model that cannot be exported as asked (format, missing package, inference held in Python)."""

"""Every exception boxforge raises on bad input, in one place.

The CLI turns any `BoxforgeError` into one line on stderr and exit status 2, so every message must
say what is wrong, where, and what is allowed. Classes that callers used to catch as a built-in
exception (a bad model option was a `ValueError`) subclass that built-in too, so `except ValueError`
keeps working while the CLI still prints one line.
"""

from __future__ import annotations


class BoxforgeError(Exception):
    """Base class: an error the user can act on (bad input, bad option)."""


class DatasetError(BoxforgeError):
    """A dataset (or one of its files) cannot be read at all."""


class UnsafeInputError(DatasetError):
    """A file tried something a trusted file never does (path escape, XML entities, bomb)."""


class ImageReadError(DatasetError):
    """An image file that cannot be opened or decoded (the message says why)."""


class PredictionsError(BoxforgeError):
    """A predictions file (or a Predictions object) does not fit the dataset it is evaluated on."""


class CheckpointError(BoxforgeError):
    """A checkpoint that cannot be written or read; the message names the file and the cause."""


class DiskFullError(CheckpointError):
    """Saving failed for lack of space (or a file-size limit); the previous checkpoint is intact."""


class ModelError(BoxforgeError, ValueError):
    """A model that cannot be built or run as asked (unknown name, a size or option it does not take)."""


class TrainingError(BoxforgeError):
    """Training cannot go on (non-finite losses, data loader failure); the last good checkpoint is kept."""


class ExportError(BoxforgeError):
    """An export that cannot be written or does not reproduce its checkpoint."""


class SettingError(BoxforgeError):
    """An environment setting boxforge reads (BOXFORGE_PROGRESS) holds a value it does not know."""

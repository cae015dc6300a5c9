"""`boxforge prepare`: turn a downloaded dataset's own layout into one boxforge reads (ImageFolder)."""

from boxforge.prepare.imagenet import PrepareReport, prepare_imagenet, undo_imagenet

__all__ = ["PrepareReport", "prepare_imagenet", "undo_imagenet"]

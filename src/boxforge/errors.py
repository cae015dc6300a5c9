"""boxforge's own exception types.

The CLI turns any `BoxforgeError` into one line on stderr and exit status 2, so
every message must say what is wrong, where, and what is allowed.
"""

from __future__ import annotations


class BoxforgeError(Exception):
    """Base class: an error the user can act on (bad input, bad option)."""


class DatasetError(BoxforgeError):
    """A dataset (or one of its files) cannot be read at all."""


class UnsafeInputError(DatasetError):
    """A file tried something a trusted file never does (path escape, XML entities, bomb)."""

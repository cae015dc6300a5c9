"""Problems found in a dataset: the vocabulary shared by readers, `check` and `convert`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Every kind `check` can report; the JSON report uses exactly these names.
KINDS: tuple[str, ...] = (
    "missing_annotation",
    "missing_image",
    "unreadable_image",
    "size_mismatch",
    "exif_rotation",
    "empty_annotation",
    "degenerate_box",
    "box_out_of_bounds",
    "nan_box",
    "unknown_class",
    "duplicate_image",
    "split_overlap",
    "invalid_annotation",
    "unsafe_path",
)
SEVERITIES: tuple[str, ...] = ("error", "warning")


@dataclass(frozen=True)
class Problem:
    """One problem with one image or annotation file.

    `image` and `annotation` are paths as the user would type them (relative to
    the dataset root where possible), or "" when not applicable.
    """

    kind: str
    severity: str
    image: str
    annotation: str
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; allowed: error, warning")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def where(self) -> str:
        """The file the user should open first: the annotation for box and label problems, else the image."""
        if self.kind in _ANNOTATION_KINDS:
            return self.annotation or self.image or "<dataset>"
        return self.image or self.annotation or "<dataset>"


_ANNOTATION_KINDS = {"invalid_annotation", "unknown_class", "degenerate_box", "nan_box", "box_out_of_bounds",
                     "empty_annotation", "size_mismatch"}

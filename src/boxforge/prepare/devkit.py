"""Reading the ILSVRC2012 devkit: the 1,000 leaf synsets and the validation ground truth.

The devkit (`ILSVRC2012_devkit_t12.tar.gz`, or that archive unpacked) holds
`data/meta.mat`, a MATLAB struct array `synsets` of all 1,860 WordNet nodes (ILSVRC2012_ID,
WNID, words, num_children, ...), and `data/ILSVRC2012_validation_ground_truth.txt`, one 1-based
ILSVRC2012_ID per line for validation image 1, 2, ... As torchvision's ImageNet does, only leaf
synsets (num_children == 0) are classes. Files are read straight out of the archive: nothing is
unpacked.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from boxforge.errors import BoxforgeError

META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


@dataclass
class Devkit:
    """wnids[i] / names[i]: the synset with ILSVRC2012_ID i + 1 (leaf synsets only, ids 1..N);
    val_ids[k]: the ILSVRC2012_ID of validation image k + 1."""

    source: Path
    wnids: list[str]
    names: list[tuple[str, ...]]
    val_ids: list[int]

    def val_wnid(self, image_number: int) -> str:
        """WordNet id of validation image `image_number` (1-based, as in ILSVRC2012_val_00000001.JPEG)."""
        return self.wnids[self.val_ids[image_number - 1] - 1]


def _read_member(devkit: Path, relative: str) -> bytes:
    """`relative` (e.g. data/meta.mat) from the devkit folder or archive, wherever its top folder is."""
    if devkit.is_dir():
        found = [p for p in (devkit / relative, *devkit.glob(f"*/{relative}")) if p.is_file()]
        if not found:
            raise BoxforgeError(f"{devkit}: no {relative} in this devkit folder")
        return found[0].read_bytes()
    try:
        with tarfile.open(devkit, "r:*") as tar:
            for member in tar:
                if member.isfile() and (member.name == relative or member.name.endswith("/" + relative)):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return handle.read()
    except (tarfile.TarError, OSError) as exc:
        raise BoxforgeError(f"{devkit}: not a readable devkit archive ({exc})") from exc
    raise BoxforgeError(f"{devkit}: no {relative} in this devkit archive")


def _field(record: object, name: str) -> object:
    try:
        return record[name]  # type: ignore[index]
    except (KeyError, ValueError, IndexError) as exc:
        raise BoxforgeError(f"meta.mat: synset record has no field {name!r}") from exc


def read_devkit(devkit: str | Path) -> Devkit:
    """Parse meta.mat (scipy.io) and the validation ground truth; errors name the file and the problem."""
    import scipy.io

    devkit = Path(devkit)
    if not devkit.exists():
        raise BoxforgeError(f"{devkit}: no such devkit folder or archive")
    try:
        meta = scipy.io.loadmat(io.BytesIO(_read_member(devkit, META)), squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise BoxforgeError(f"{devkit}: {META} is not a readable MATLAB file ({exc})") from exc
    if "synsets" not in meta:
        raise BoxforgeError(f"{devkit}: {META} has no 'synsets' variable")
    leaves: dict[int, tuple[str, tuple[str, ...]]] = {}
    for record in meta["synsets"]:
        if int(_field(record, "num_children")) == 0:
            words = str(_field(record, "words"))
            leaves[int(_field(record, "ILSVRC2012_ID"))] = (str(_field(record, "WNID")),
                                                            tuple(w.strip() for w in words.split(",")))
    if sorted(leaves) != list(range(1, len(leaves) + 1)):
        raise BoxforgeError(f"{devkit}: {META}: leaf synset ids are not 1..{len(leaves)}")
    text = _read_member(devkit, GROUND_TRUTH).decode("ascii", errors="replace")
    val_ids = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not line.strip().isdigit() or not 1 <= int(line) <= len(leaves):
            raise BoxforgeError(f"{devkit}: {GROUND_TRUTH} line {line_no}: {line.strip()!r} is not a class id "
                                f"1..{len(leaves)}")
        val_ids.append(int(line))
    return Devkit(devkit, [leaves[i][0] for i in sorted(leaves)], [leaves[i][1] for i in sorted(leaves)], val_ids)

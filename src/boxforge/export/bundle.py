"""`export --bundle DIR`: a detector a user runs from their own program with onnxruntime, numpy and pillow only.

    DIR/model.onnx    the checked fp32 export (written by deploy.py before this is called)
    DIR/predict.py    standalone_predict.py, copied verbatim: the same predictions JSON and drawn images as
                      `boxforge predict`, without boxforge or torch
    DIR/README.md     how to run it, what goes in and out, the classes and the input size

The script is a copy of a module of this package (not generated text), so it is linted and tested as code;
tests/inference/test_bundle.py runs it in a fresh virtual environment holding only the three packages.
"""

from __future__ import annotations

import json
from pathlib import Path

from boxforge.files import atomic_write

SCRIPT = Path(__file__).with_name("standalone_predict.py")
REQUIREMENTS = ("onnxruntime", "numpy", "pillow")


def write_bundle(folder: Path, props: dict[str, str]) -> Path:
    """Write predict.py, README.md and requirements.txt into `folder` (model.onnx is already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "predict.py", SCRIPT.read_text(encoding="utf-8"))
    atomic_write(folder / "requirements.txt", "\n".join(REQUIREMENTS) + "\n")
    atomic_write(folder / "README.md", readme(props))
    return folder


def readme(props: dict[str, str]) -> str:
    """The bundle's README, from the export's metadata (model, classes, input size, post-processing defaults)."""
    classes = json.loads(props.get("class_names", "[]"))
    post = json.loads(props.get("postprocess", "{}"))
    size = props.get("img_size", "?")
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    return f"""# {props.get('model_name', 'boxforge')} detector (exported by boxforge {props.get('boxforge_version', '')})

Classes ({len(classes)}): {shown}

## Run it

    pip install {' '.join(REQUIREMENTS)}
    python predict.py photo.jpg more_photos/ --out predictions --score-thresh 0.5

This writes `predictions/<image id>.<ext>` with the boxes drawn (leave them out with `--no-draw`) and
`predictions/predictions.json` (or `--json FILE`), the file `boxforge predict --json` writes:
`{{"classes": [...], "predictions": [{{"image", "label", "score", "box": [x1, y1, x2, y2]}}], "images":
[{{"image", "path", "width", "height"}}], "model", "settings"}}`, boxes in each image's own pixels.
`--iou-thresh` (NMS, default 0.45), `--max-det` (default 100) and `--threads` are the other options.

## The model, for your own program

`model.onnx` takes `images`: float32 (B, 3, {size}, {size}), RGB in 0..1, the picture resized to
{size} x {size} (aspect ratio not kept, no letterbox; normalisation is inside the graph), and three
optional inputs `score_thresh`, `iou_thresh` (0-d float32) and `max_det` (0-d int64), whose defaults
are the export's: {', '.join(f'{k} {v}' for k, v in post.items())}.
It returns `boxes` (B, K, 4) xyxy in input pixels, `scores` (B, K), `labels` (B, K) int64, 0-based into
the classes above, and `num_detections` (B,): rows past it are padding. Scale the boxes by
(width / {size}, height / {size}) to get the image's pixels; `predict.py` shows each step.

`predict.py` resizes with Pillow's antialiased bilinear filter where boxforge uses torchvision's: the
two can differ by a grey level on some pixels, so a score may differ in the fourth decimal and a box by
a fraction of a pixel from `boxforge predict` on the same image.
"""

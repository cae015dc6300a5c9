"""Does an exported file give the checkpoint's detections? Compare both on the same images, in two steps.

1. The network alone: decoded boxes (B, A, 4) and class scores (B, A, C) for every anchor, from the
   PyTorch graph and from the exported graph's two extra outputs (traced once with them). These must agree within
   BOX_TOL pixels and SCORE_TOL everywhere; ties cannot blur this step.
2. The final detections: the Detector (torchvision's post-processing) against the exported file.
   Detections are matched per image and label, greedily by IoU, highest score first; a matched pair
   must agree within BOX_TOL and SCORE_TOL. Greedy NMS and top-k are exact for distinct scores but
   arbitrary between equal ones, so a difference is excused only where that arbitrariness reaches:
   at a score the Detector shares with another candidate of its class (within the numeric noise
   measured in step 1) or lower, or within SCORE_TOL of the score threshold or of the max_det cut.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou

from boxforge.data.images import read_image
from boxforge.data.transforms import detection_transforms
from boxforge.errors import BoxforgeError

BOX_TOL = 1.0  # pixels of the model input
SCORE_TOL = 1e-3
MATCH_IOU = 0.5
SYNTHETIC_IMAGES = 4


@dataclass
class ParityReport:
    images: int = 0
    raw_box_diff: float = 0.0  # step 1: the network, every anchor
    raw_score_diff: float = 0.0
    compared: int = 0  # step 2: matched detection pairs
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    excused: int = 0  # unmatched at a tie or at the score/max_det border
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.failures)} problems; first: {self.failures[0]})"
        note = " (every detection sits at a tie: is the model untrained?)" if not self.compared and self.excused else ""
        return (f"parity with PyTorch on {self.images} images: network max difference {self.raw_box_diff:.2g} px, "
                f"score {self.raw_score_diff:.2g}; {self.compared} detections matched, max difference "
                f"{self.max_box_diff:.2g} px, score {self.max_score_diff:.2g} (tolerance {BOX_TOL:g} px, "
                f"{SCORE_TOL:g}); {self.excused} unmatched at ties or thresholds{note}: {verdict}")


def load_batch(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) float32 in 0..1, preprocessed as `predict` and `eval` do."""
    transform = detection_transforms(False, size)
    images = []
    for path in paths:
        try:
            pixels = read_image(Path(path))
        except Exception as exc:  # any decoding failure: the user named this file, tell them
            raise BoxforgeError(f"--check-images: {path}: cannot be read ({exc})") from exc
        images.append(transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor))
    return torch.stack(images)


def synthetic_batch(size: int) -> torch.Tensor:
    from boxforge.data.synth import synthesize_detection

    with tempfile.TemporaryDirectory() as tmp:
        index = synthesize_detection(Path(tmp) / "parity", images=SYNTHETIC_IMAGES, classes=3, seed=0)
        return load_batch([s.image_path for s in index.samples], size)


def tie_levels(scores: np.ndarray, score_thresh: float, topk: int, tol: float) -> np.ndarray:
    """scores (A, C) -> (C,): per class the highest score above the threshold that another candidate of
    the class shares within `tol` (-inf where none): below it, NMS and top-k may legitimately differ."""
    levels = np.full(scores.shape[1], -np.inf)
    for c in range(scores.shape[1]):
        s = np.sort(scores[:, c][scores[:, c] > score_thresh])[::-1][:topk + 1]
        tied = np.nonzero(np.diff(s) >= -tol)[0] if len(s) > 1 else []
        if len(tied):
            levels[c] = s[tied[0]]
    return levels


def compare_detections(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...], *, score_thresh: float,
                       max_det: int, ties: np.ndarray, tol: float, report: ParityReport, where: str) -> None:
    """Add the comparison of one image's detections (boxes, scores, labels), ref = PyTorch, to `report`."""
    (rb, rs, rl), (gb, gs, gl) = ref, got

    def excused(scores: np.ndarray, s: float, label: int) -> bool:
        floor = scores.min() if len(scores) >= max_det else score_thresh
        return (s <= ties[label] + tol or abs(s - score_thresh) <= SCORE_TOL or abs(s - floor) <= SCORE_TOL)

    iou = box_iou(torch.as_tensor(rb, dtype=torch.float64), torch.as_tensor(gb, dtype=torch.float64)).numpy()
    iou = np.where(rl[:, None] == gl[None, :], iou, 0.0)
    used, matched = np.zeros(len(gb), bool), np.zeros(len(rb), bool)
    for i in np.argsort(-rs, kind="stable"):
        if not len(gb):
            break
        candidates = np.where(used, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] < MATCH_IOU:
            continue
        box_diff, score_diff = float(np.abs(rb[i] - gb[j]).max()), float(abs(rs[i] - gs[j]))
        bad = box_diff > BOX_TOL or score_diff > SCORE_TOL
        if bad and excused(rs, rs[i], rl[i]) and excused(gs, gs[j], gl[j]):
            continue  # a different one of several equally good boxes: leave both unmatched (excused below)
        used[j], matched[i] = True, True
        report.compared += 1
        report.max_box_diff = max(report.max_box_diff, box_diff)
        report.max_score_diff = max(report.max_score_diff, score_diff)
        if bad:
            report.failures.append(f"{where}: detection {int(i)} differs by {box_diff:.3g} px, score {score_diff:.3g}")
    for scores, labels, keep, side in ((rs, rl, matched, "PyTorch"), (gs, gl, used, "ONNX")):
        for s, label in zip(scores[~keep], labels[~keep]):
            if excused(scores, s, int(label)):
                report.excused += 1
            else:
                report.failures.append(f"{where}: a {side} detection (label {int(label)}, score {s:.4f}) "
                                       "has no counterpart")


def _run_raw(with_raw: bytes, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The network's outputs from the exported graph with its two extra outputs (export/onnx.py `_trace`):
    boxes (B, A, 4), scores (B, A, C)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the threshold inputs' defaults draw a warning
    session = ort.InferenceSession(with_raw, options, providers=["CPUExecutionProvider"])
    runs = [session.run(["raw_boxes", "raw_scores"], {"images": image[None].numpy()}) for image in batch]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])  # one image at a time:
    # a file exported for batch 1 takes no other


def check_parity(model: torch.nn.Module, graph: torch.nn.Module, onnx_path: Path, size: int,
                 images: list[str | Path] | None = None, *, with_raw: bytes) -> ParityReport:
    """Compare `model` (a Detector, post-processing set as exported) and its `graph` (ExportableDetector) with the
    ONNX file at `onnx_path`, on `images` (default: SYNTHETIC_IMAGES synthetic ones).

    with_raw: the same exported graph with the network's outputs as two more outputs (step 1 runs it)."""
    from boxforge.inference.backends import ModelMeta, OnnxDetector, OnnxSession, TorchDetector

    batch = load_batch([Path(p) for p in images], size) if images else synthetic_batch(size)
    report = ParityReport(images=len(batch))
    with torch.no_grad():
        ref_boxes, ref_scores = (t.numpy() for t in graph.raw(batch))
    raw_boxes, raw_scores = _run_raw(with_raw, batch)
    report.raw_box_diff = float(np.abs(ref_boxes - raw_boxes).max())
    report.raw_score_diff = float(np.abs(ref_scores - raw_scores).max())
    if report.raw_box_diff > BOX_TOL or report.raw_score_diff > SCORE_TOL:
        report.failures.append(f"the network's outputs differ by {report.raw_box_diff:.3g} px and "
                               f"{report.raw_score_diff:.3g} in score before post-processing")
    settings = model.postprocess_settings()
    thresh, max_det = float(settings["score_thresh"]), int(settings["detections_per_img"])
    tol = 2 * report.raw_score_diff + 1e-6  # numeric noise: scores closer than this may swap order
    meta = ModelMeta(Path("<checkpoint>"), "checkpoint", model.name, list(model.class_names), size)
    torch_out = TorchDetector(model, meta, torch.device("cpu")).run(batch)
    onnx_out = OnnxDetector(OnnxSession(Path(onnx_path), torch.device("cpu"))).run(batch)
    for k, (ref, got) in enumerate(zip(torch_out, onnx_out)):
        ties = tie_levels(ref_scores[k], thresh, int(settings["topk_candidates"]), tol)
        where = f"image {images[k] if images else f'synthetic {k}'}"
        compare_detections(ref, got, score_thresh=thresh, max_det=max_det, ties=ties, tol=tol, report=report,
                           where=where)
    return report

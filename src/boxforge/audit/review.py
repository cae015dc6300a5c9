"""DIR/review.html: the suspected label mistakes, one at a time, to accept or reject, in one offline file.

Each issue shows a crop of its image with the label's box (orange, dashed in the legend) and the
suggested box (green) drawn, what the label says and what is suggested. Self-contained like the run
report: crops are inlined JPEG data URIs, the script is inline, nothing is fetched, so it opens from a
file with no server. Keys: A accept, R reject, U undecide, J / right arrow next, K / left arrow
previous, S save. "Save decisions" downloads `decisions.json`, which `boxforge audit --apply` reads.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from boxforge.audit.rank import Issue
from boxforge.data.images import load_rgb
from boxforge.data.index import DatasetIndex
from boxforge.errors import BoxforgeError, ImageReadError, UnsafeInputError

MAX_SHOWN = 1000  # issues on the page, highest score first (issues.json holds them all)
CROP_SIDE = 320  # px, the longer side of a shown crop
LABEL_COLOUR, SUGGESTED_COLOUR = (255, 140, 0), (30, 200, 80)
DECISIONS_FORMAT = "boxforge-audit-decisions-v1"


def _crop(path: Path | None, issue: Issue) -> str:
    """A JPEG data URI of the region around the issue's boxes (twice their extent), boxes drawn; "" if unreadable."""
    if path is None:
        return ""
    try:
        pixels = load_rgb(path)
    except (OSError, ImageReadError, UnsafeInputError, BoxforgeError):
        return ""
    height, width = pixels.shape[:2]
    boxes = [b for b in (issue.label_box, issue.suggested_box) if b is not None]
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad = max(x2 - x1, y2 - y1, 32) * 0.5
    left, top = max(0, int(x1 - pad)), max(0, int(y1 - pad))
    right, bottom = min(width, int(x2 + pad) + 1), min(height, int(y2 + pad) + 1)
    image = Image.fromarray(pixels[top:bottom, left:right])
    scale = min(1.0, CROP_SIDE / max(image.size)) if max(image.size) else 1.0
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    for box, colour in ((issue.label_box, LABEL_COLOUR), (issue.suggested_box, SUGGESTED_COLOUR)):
        if box is not None:
            draw.rectangle([(box[0] - left) * scale, (box[1] - top) * scale, (box[2] - left) * scale,
                            (box[3] - top) * scale], outline=colour, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _card(number: int, issue: Issue, uri: str) -> str:
    said = f"{issue.label_class}" if issue.label_class else "no label here"
    suggested = {"missing_box": f"add a {issue.suggested_class} box", "spurious_box": "remove the label",
                 "bad_box": "redraw the box (green)", "wrong_class": f"class {issue.suggested_class}"}[issue.kind]
    picture = f'<img src="{uri}" alt="{html.escape(issue.image)}">' if uri else "<p>(image not readable)</p>"
    return (f'<section class="issue" id="issue-{number}" data-id="{number}">'
            f'<h2>{number + 1}. {html.escape(issue.kind)} in {html.escape(issue.image)} '
            f'<span class="score">score {issue.score:.3f}</span></h2>{picture}'
            f'<p>label: {html.escape(said)}; suggested: {html.escape(suggested)}</p>'
            f'<p class="decision">undecided</p></section>')


SCRIPT = """
const issues = JSON.parse(document.getElementById('issues').textContent);
const meta = JSON.parse(document.getElementById('meta').textContent);
const decisions = {};
let current = 0;
const cards = Array.from(document.querySelectorAll('section.issue'));
function show(i) {
  current = Math.max(0, Math.min(cards.length - 1, i));
  cards.forEach((c, k) => c.classList.toggle('current', k === current));
  cards[current].scrollIntoView({block: 'start'});
}
function decide(value) {
  const id = cards[current].dataset.id;
  if (value === null) { delete decisions[id]; } else { decisions[id] = value; }
  cards[current].querySelector('.decision').textContent = value || 'undecided';
  cards[current].dataset.decision = value || '';
  document.getElementById('count').textContent = Object.keys(decisions).length + ' of ' + cards.length + ' decided';
  if (value !== null) { show(current + 1); }
}
function save() {
  const doc = {format: meta.format, dataset: meta.dataset, classes: meta.classes, decisions: Object.keys(decisions)
    .map(Number).sort((a, b) => a - b).map(id => Object.assign({id: id, decision: decisions[id]}, issues[id]))};
  const blob = new Blob([JSON.stringify(doc, null, 1)], {type: 'application/json'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'decisions.json';
  document.body.appendChild(link);
  link.click();
  link.remove();
}
document.addEventListener('keydown', e => {
  const key = e.key.toLowerCase();
  if (key === 'a') decide('accept');
  else if (key === 'r') decide('reject');
  else if (key === 'u') decide(null);
  else if (key === 'j' || e.key === 'ArrowRight') show(current + 1);
  else if (key === 'k' || e.key === 'ArrowLeft') show(current - 1);
  else if (key === 's') save();
});
document.getElementById('save').addEventListener('click', save);
cards.forEach((c, k) => c.addEventListener('click', () => show(k)));
if (cards.length) show(0);
"""

STYLE = """
body { font-family: sans-serif; margin: 1em auto; max-width: 60em; }
section.issue { border: 2px solid #ddd; margin: 1em 0; padding: 0.5em 1em; scroll-margin-top: 10em; }
h1 { font-size: 1.3em; margin: 0.2em 0; } h2 { font-size: 1.1em; }
section.current { border-color: #3366cc; }
section[data-decision=accept] .decision { color: #1a7f37; font-weight: bold; }
section[data-decision=reject] .decision { color: #b42318; font-weight: bold; }
.score { color: #666; font-weight: normal; font-size: 0.8em; }
header { position: sticky; top: 0; background: white; padding: 0.5em 0; border-bottom: 1px solid #ddd; }
"""


def write_review(index: DatasetIndex, issues: list[Issue], path: Path, *, dataset: str) -> Path:
    """The review page for `issues` (ids = their positions in issues.json), written atomically to `path`."""
    from boxforge.files import atomic_write

    by_id = index.by_id()
    shown = issues[:MAX_SHOWN]
    cards = [_card(n, issue, _crop(by_id[issue.image].image_path, issue)) for n, issue in enumerate(shown)]
    entries = [issue.to_json() for issue in shown]
    meta = {"format": DECISIONS_FORMAT, "dataset": dataset, "classes": list(index.classes)}
    more = (f"<p>showing the {MAX_SHOWN} highest-scoring of {len(issues)} issues (all are in issues.json)</p>"
            if len(issues) > MAX_SHOWN else "")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>boxforge audit review</title>"
            f"<style>{STYLE}</style></head><body><header><h1>Suspected label mistakes in {html.escape(dataset)}</h1>"
            f"<p>Keys: A accept, R reject, U undecide, J/&rarr; next, K/&larr; previous, S save. Orange: the label's "
            f"box; green: the suggested one.</p><p><button id=\"save\">Save decisions</button> "
            f"<span id=\"count\">0 of {len(shown)} decided</span></p>{more}</header>{''.join(cards)}"
            f"<script type=\"application/json\" id=\"issues\">{_json_in_html(entries)}</script>"
            f"<script type=\"application/json\" id=\"meta\">{_json_in_html(meta)}</script>"
            f"<script>{SCRIPT}</script></body></html>")
    return atomic_write(path, page)


def _json_in_html(doc: Any) -> str:
    """JSON that cannot close its <script> element early (a class or id containing "</script>")."""
    return json.dumps(doc).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

"""The naming gallery: one self-contained HTML page of every cluster's exemplar patches, with
a field per cluster to name it, that saves the names as a small JSON file.

The page needs nothing but itself (thumbnails are inline JPEGs, the script is inline), so it
opens from disk, offline, in any browser. "Save names" downloads ``names.json`` (the format
:func:`~protoseg.io.prototype_files.load_names` reads); the choices are also kept in the
browser's local storage, so a page reopened shows them again.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.io.images import write_text_atomic
from protoseg.io.prototype_files import IGNORE

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
header { position: sticky; top: 0; background: #fafafa; padding: .5em 0; z-index: 1;
         border-bottom: 1px solid #ddd; }
.cluster { display: inline-block; vertical-align: top; width: 340px; margin: .5em;
           padding: .5em; background: #fff; border: 1px solid #ccc; border-radius: 6px; }
.cluster.named { border-color: #2a7; box-shadow: 0 0 0 2px #2a73; }
.cluster img { width: 64px; height: 64px; margin: 1px; image-rendering: auto; }
.cluster h2 { font-size: 1em; margin: 0 0 .3em 0; }
.cluster select { width: 100%; margin-top: .3em; font-size: 1em; }
button { font-size: 1em; padding: .3em 1em; }
#status { margin-left: 1em; color: #555; }
"""

_SCRIPT = """
const KEY = "protoseg-names:" + document.body.dataset.clusters;
function names() {
  const out = {};
  for (const field of document.querySelectorAll("select.name")) {
    if (field.value) out[field.dataset.cluster] = field.value;
    field.closest(".cluster").classList.toggle("named", !!field.value);
  }
  return out;
}
function refresh() {
  const given = names();
  localStorage.setItem(KEY, JSON.stringify(given));
  document.getElementById("status").textContent =
    Object.keys(given).length + " of " + document.body.dataset.count + " clusters named";
}
function save() {
  const payload = {clusters: document.body.dataset.clusters,
                   k: Number(document.body.dataset.count), names: names()};
  const text = JSON.stringify(payload, null, 2) + "\\n";
  document.getElementById("saved").textContent = text;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  link.download = "names.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
}
window.addEventListener("DOMContentLoaded", () => {
  const kept = JSON.parse(localStorage.getItem(KEY) || "{}");
  for (const field of document.querySelectorAll("select.name")) {
    if (kept[field.dataset.cluster]) field.value = kept[field.dataset.cluster];
    field.addEventListener("change", refresh);
  }
  document.getElementById("save").addEventListener("click", save);
  refresh();
});
"""


def jpeg_data_uri(image: np.ndarray, quality: int = 85) -> str:
    """(H, W, 3) uint8 as a ``data:image/jpeg;base64,...`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_html(
    thumbnails: Sequence[Sequence[np.ndarray]],
    sizes: Sequence[int],
    names_allowed: Sequence[str],
    clusters_file: str,
    title: str = "protoseg: name the tissue prototypes",
) -> str:
    """The page's HTML.

    Args:
        thumbnails: per cluster, its exemplar patches (H, W, 3) uint8, nearest first.
        sizes: patches per cluster.
        names_allowed: what a cluster may be named (classes, ``background``, ``ignore``).
        clusters_file: the clusters file's name, saved with the names.
        title: the page title.
    """
    options = ['<option value="">(not named)</option>'] + [
        f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names_allowed
    ]
    cards = []
    for k, (patches, size) in enumerate(zip(thumbnails, sizes, strict=True)):
        images = "".join(
            f'<img src="{jpeg_data_uri(p)}" alt="cluster {k} exemplar {i}">'
            for i, p in enumerate(patches)
        )
        cards.append(
            f'<div class="cluster" id="cluster-{k}"><h2>Cluster {k} '
            f"<small>({size} patches)</small></h2>{images}"
            f'<label>Name: <select class="name" id="name-{k}" name="cluster-{k}" '
            f'data-cluster="{k}">{"".join(options)}</select></label></div>'
        )
    hint = (
        f"Name each cluster by its exemplars (nearest its centre first): a tissue class, or "
        f"<b>{IGNORE}</b> for mixed or unclear ones (their pixels stay unsure). Then save the "
        "names and pass the file to <code>protoseg dictionary --names</code>."
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f'<body data-clusters="{html.escape(clusters_file)}" data-count="{len(sizes)}">'
        f"<header><h1>{html.escape(title)}</h1><p>{hint}</p>"
        f'<button id="save" type="button">Save names</button><span id="status"></span>'
        f"</header>\n<main>{''.join(cards)}</main>\n"
        f'<h3>Last saved</h3><pre id="saved"></pre><script>{_SCRIPT}</script></body></html>\n'
    )


def write_gallery(
    path: str | Path,
    thumbnails: Sequence[Sequence[np.ndarray]],
    sizes: Sequence[int],
    names_allowed: Sequence[str],
    clusters_file: str,
) -> Path:
    """Writes :func:`gallery_html` atomically; returns the path."""
    write_text_atomic(path, gallery_html(thumbnails, sizes, names_allowed, clusters_file))
    return Path(path)

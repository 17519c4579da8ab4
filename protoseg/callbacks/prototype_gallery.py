"""Clusters the patch embeddings a prototype stage predicts and writes the naming gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from protoseg.io.class_maps import TissueClasses
from protoseg.io.gallery import write_gallery
from protoseg.io.images import read_rgb
from protoseg.io.prototype_files import Clusters, EmbedderSettings, save_clusters
from protoseg.io.wsi import open_slide, read_region_at_mpp, slide_mpp
from protoseg.modules.prototypes import exemplars, kmeans_prototypes

#: Side of the gallery's thumbnails, px.
THUMBNAIL = 96


def patch_picture(source: dict[str, Any], images: dict[str, np.ndarray]) -> np.ndarray:
    """The (THUMBNAIL, THUMBNAIL, 3) uint8 picture of a patch source (an image crop, white
    beyond its border, or a slide region); ``images`` caches decoded images by path."""
    size, x, y = int(source["size"]), int(source["x"]), int(source["y"])
    left, top = x - size // 2, y - size // 2
    if source.get("slide"):
        slide = open_slide(source["path"])
        try:
            base = slide_mpp(slide, default=1.0)
            crop = read_region_at_mpp(slide, left, top, THUMBNAIL, base * size / THUMBNAIL, base)
        finally:
            slide.close()
        return crop
    image = images.get(source["path"])
    if image is None:
        image = images[source["path"]] = read_rgb(source["path"])
    padded = np.pad(image, ((size, size), (size, size), (0, 0)), constant_values=255)
    crop = padded[top + size : top + 2 * size, left + size : left + 2 * size]
    return np.asarray(Image.fromarray(crop).resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR))


class PrototypeGalleryWriter(BasePredictionWriter):
    """Collects the patch embeddings of a prototype stage's predict (items with
    ``embeddings`` and ``sources``), then writes into ``output_dir``:

    - ``clusters.npz``: k-means centroids of the embeddings, cluster sizes, the embedder's
      settings, the dataset's classes and every cluster's exemplars
      (:func:`~protoseg.io.prototype_files.save_clusters`);
    - ``gallery.html``: the naming page (:func:`~protoseg.io.gallery.write_gallery`).

    One process (the k-means sees every patch at once); files are written atomically.

    Args:
        output_dir: destination folder.
        classes: the names a cluster may get (the dataset's classes).
        embedder: the settings of the embeddings (stored for the query).
        clusters: K.
        exemplars: exemplars per cluster, nearest the centroid first.
        seed: k-means seed.
    """

    def __init__(
        self,
        output_dir: str | Path,
        classes: TissueClasses,
        embedder: EmbedderSettings,
        clusters: int = 30,
        exemplars: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.classes = classes
        self.embedder = embedder
        self.clusters = clusters
        self.exemplars = exemplars
        self.seed = seed
        self._embeddings: list[np.ndarray] = []
        self._sources: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.world_size > 1:
            raise RuntimeError("clustering runs in one process: predict with --trainer.devices 1")
        self._embeddings, self._sources = [], []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for item in prediction:
            self._embeddings.append(np.asarray(item["embeddings"], np.float32))
            self._sources.extend(item["sources"])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(np.concatenate(self._embeddings), self._sources)

    def write(self, embeddings: np.ndarray, sources: list[dict[str, Any]]) -> Clusters:
        """Clusters ``embeddings`` (N, D) whose patches are ``sources`` and writes the files."""
        centroids, assignment = kmeans_prototypes(embeddings, self.clusters, self.seed)
        chosen = exemplars(embeddings, assignment, centroids, self.exemplars)
        clusters = Clusters(
            centroids,
            np.bincount(assignment, minlength=self.clusters).astype(np.int64),
            self.embedder,
            self.classes,
            [[sources[i] for i in members] for members in chosen],
        )
        path = save_clusters(self.output_dir / "clusters.npz", clusters)
        cache: dict[str, np.ndarray] = {}
        thumbnails = [[patch_picture(s, cache) for s in group] for group in clusters.exemplars]
        gallery = write_gallery(
            self.output_dir / "gallery.html",
            thumbnails,
            clusters.sizes.tolist(),
            clusters.names_allowed,
            path.name,
        )
        print(
            f"protoseg: {len(embeddings)} patches in {self.clusters} clusters -> {path.resolve()}"
            f"\nprotoseg: name them in {gallery.resolve()}"
        )
        return clusters

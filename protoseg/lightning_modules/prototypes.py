"""The tissue prototype dictionary stage (Pan et al., "Human-machine interactive tissue
prototype learning for label-efficient histopathology image segmentation", IPMI 2023).

Two passes of ``protoseg predict`` over one config, with a person (or a simulated one) between:

1. without ``dictionary``: every image (or slide tile) is embedded densely and a patch
   embedding is taken every ``patch_step`` px;
   :class:`~protoseg.callbacks.prototype_gallery.PrototypeGalleryWriter` clusters them
   (k-means, ``clusters``) and writes ``clusters.npz`` and the naming gallery;
2. the names (``protoseg dictionary``) make ``dictionary.npz``; with it, every pixel takes the
   class of its most similar named prototype, or stays unsure (255) below ``threshold``:
   class-map pseudo masks (:class:`~protoseg.callbacks.class_map_writer.ClassMapWriter`, or
   per slide :class:`~protoseg.callbacks.class_map_writer.SlideClassMapWriter`).

With a dictionary, ``protoseg validate`` / ``test`` score the query's maps of the validation /
test images against their masks (``val/miou``, ...; unsure pixels count as misses). Those
images' labels are not used: the masks only score.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from protoseg.io.class_maps import TissueClasses
from protoseg.io.errors import DataError
from protoseg.io.prototype_files import load_dictionary
from protoseg.lightning_modules.evaluation import log_gathered
from protoseg.lightning_modules.hparams import save_init_hyperparameters
from protoseg.metrics.tissue import TissueMetrics
from protoseg.modules.prototypes import build_embedder, grid_positions, query_classes

Batch = dict[str, Any]


class PrototypeModule(L.LightningModule):
    """Dense SSL embeddings, clustered into prototypes or queried against named ones.

    Args:
        embedder: the dense embedder: (B, 3, H, W) -> (B, D, H / stride, W / stride) unit
            vectors, with ``stride``, ``window`` (px a patch embedding stands for) and
            ``settings`` (:class:`~protoseg.io.prototype_files.EmbedderSettings`), e.g.
            :class:`~protoseg.modules.prototypes.DenseEmbedder` (an SSL ``encoder.ckpt``) or
            the network-free :class:`~protoseg.modules.prototypes.ColourEmbedder`. With a
            ``dictionary`` it may be left out (the dictionary's settings build it) and must
            otherwise match them.
        dictionary: a ``dictionary.npz`` of named prototypes (``protoseg dictionary``); None:
            predict collects patch embeddings for clustering instead of writing masks.
        threshold: cosine similarity to the nearest prototype below which a pixel is unsure
            (Proto2Seg used 0.8 with its encoder; the scale depends on the encoder).
        clusters: K of the k-means (Proto2Seg: 30).
        exemplars: patches shown per cluster in the gallery (Proto2Seg: 10).
        patch_step: px between the patches embedded for clustering.
        seed: seed of the k-means.
        use_image_labels: where a batch has image-level labels (the training patches of a
            weakly supervised set), the query gives each image's pixels only the classes its
            label names (or the background): the weak labels the dataset comes with, used
            as WSSS methods use them to restrict class activation maps.
    """

    def __init__(
        self,
        embedder: nn.Module | None = None,
        dictionary: str | None = None,
        threshold: float = 0.5,
        clusters: int = 30,
        exemplars: int = 10,
        patch_step: int = 32,
        seed: int = 0,
        use_image_labels: bool = True,
    ) -> None:
        super().__init__()
        if clusters < 2 or exemplars < 1 or patch_step < 1:
            raise ValueError("need clusters >= 2, exemplars >= 1 and patch_step >= 1")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        save_init_hyperparameters(self)
        self.classes: TissueClasses | None = None
        if dictionary is not None:
            loaded = load_dictionary(dictionary)
            if embedder is None:
                embedder = build_embedder(loaded.embedder)
            elif embedder.settings != loaded.embedder:
                raise DataError(
                    f"{dictionary}: made with embedder {loaded.embedder.as_dict()}, not "
                    f"{embedder.settings.as_dict()}; leave model.embedder out to use its own"
                )
            self.classes = loaded.classes
            self.register_buffer("prototypes", torch.from_numpy(loaded.prototypes))
            self.register_buffer("classes_of", torch.from_numpy(loaded.classes_of))
            self.val_metrics = TissueMetrics(self.classes.names, prefix="val/")
            self.test_metrics = TissueMetrics(self.classes.names, prefix="test/")
        elif embedder is None:
            raise ValueError("PrototypeModule needs an embedder (or a dictionary that names one)")
        # Nothing of this stage trains: its weights are the SSL encoder's (the embedder's).
        self.embedder = embedder.requires_grad_(False)

    def setup(self, stage: str) -> None:
        """A dictionary is queried on data of its own classes: a datamodule that names other
        classes or codes (another dataset's) is refused, naming the dictionary."""
        data = getattr(self.trainer, "datamodule", None)
        theirs = getattr(data, "classes", None)
        if self.classes is None or not isinstance(theirs, TissueClasses):
            return
        mine = self.classes
        if (mine.names, mine.codes, mine.background_code) != (
            theirs.names,
            theirs.codes,
            theirs.background_code,
        ):
            raise DataError(
                f"{self.hparams.dictionary}: made for classes {mine.describe()}; the data's "
                f"are {theirs.describe()}"
            )

    @property
    def has_dictionary(self) -> bool:
        """Whether predict writes pseudo masks (else it collects patches for clustering)."""
        return self.classes is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D, h, w) of normalised images (B, 3, H, W)."""
        return self.embedder(images)

    def predict_classes(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, H, W) uint8 class indices (255 unsure) of images (B, 3, H, W); with image-level
        ``labels`` (B, C) (and ``use_image_labels``), each image's pixels take only the
        classes its label names, or the background."""
        if self.classes is None:
            raise RuntimeError("predict_classes needs a dictionary")
        allowed = None
        if labels is not None and self.hparams.use_image_labels:
            named = self.classes_of < labels.shape[1]
            present = labels.bool()[:, self.classes_of.clamp(max=labels.shape[1] - 1)]
            allowed = present | ~named  # the background's prototypes stay open
        return query_classes(
            self(images),
            self.prototypes,
            self.classes_of,
            self.hparams.threshold,
            tuple(images.shape[-2:]),
            self.embedder.stride,
            self.classes.ignore_index,
            allowed,
        )

    def _score(self, batch: Batch, metrics: TissueMetrics) -> None:
        if self.classes is None:
            raise DataError("scoring the prototype stage needs model.init_args.dictionary")
        # No labels: the masks' classes must not steer what they score.
        metrics.update(self.predict_classes(batch["image"]).long(), batch["mask"])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._score(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        log_gathered(self, self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._score(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        log_gathered(self, self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """With a dictionary, per image ``stem``, ``path`` and ``classes``; without, per image
        ``embeddings`` (N, D) float32 and ``sources`` (N dicts: ``path``, ``x``, ``y``,
        ``size`` in level-0 px of the file, ``slide``)."""
        if self.classes is not None:
            classes = self.predict_classes(batch["image"], batch.get("labels")).cpu().numpy()
            return [
                {"stem": stem, "path": path, "classes": classes[i]}
                for i, (stem, path) in enumerate(zip(batch["stem"], batch["path"], strict=True))
            ]
        embeddings = self(batch["image"]).cpu().numpy()
        return [self._patches(embeddings[i], batch, i) for i in range(len(embeddings))]

    def _patches(self, embedding: np.ndarray, batch: Batch, i: int) -> dict[str, Any]:
        """The image's patch embeddings every ``patch_step`` px, inside the image (a slide
        tile: inside its core, so that overlapping tiles give each patch once)."""
        stride = self.embedder.stride
        height, width = batch["image"].shape[-2:]
        cells = grid_positions(embedding.shape[1:], stride, self.hparams.patch_step)
        centres = (cells + 0.5) * stride  # (row, col) px of the tile or image
        keep = (centres[:, 0] < height) & (centres[:, 1] < width)
        slide = "core" in batch
        scale, x0, y0 = 1.0, 0.0, 0.0
        if slide:
            scale = float(batch["downsample"][i])
            x0, y0 = float(batch["x"][i]), float(batch["y"][i])
        xs, ys = x0 + centres[:, 1] * scale, y0 + centres[:, 0] * scale
        if slide:
            core = batch["core"][i].tolist()
            keep &= (core[0] <= xs) & (xs < core[2]) & (core[1] <= ys) & (ys < core[3])
        size = round(self.embedder.window * scale)
        path = batch["path"][i]
        sources = [
            {"path": path, "x": round(x), "y": round(y), "size": size, "slide": slide}
            for x, y in zip(xs[keep], ys[keep], strict=True)
        ]
        rows, cols = cells[keep, 0], cells[keep, 1]
        return {"embeddings": embedding[:, rows, cols].T.copy(), "sources": sources}

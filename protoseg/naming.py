"""``protoseg name-clusters``: a simulated pathologist that names clusters from a few masks.

For benchmarks and for users with a handful of annotated images. A pathologist names a cluster
by looking at its exemplars; this one looks at the patches of a few annotated images instead
(the information a pathologist has after annotating those images): every patch of those images
(one per embedding cell) goes to its nearest centroid; the class of a patch is what its mask
shows (background where that covers most of it, else its main tissue class); and a cluster is
named with the class of at least ``purity`` of its ``exemplars`` patches nearest the centroid
(Proto2Seg: 10 exemplars, clusters under 0.8 purity dropped). Clusters with fewer patches, or
less pure, are named ``ignore``. With ``--labelled DIR``, the clusters the masks leave
``ignore`` are named the same way from the patches of DIR's images whose image-level label
(in the file name) names one class, each such patch taken to show that class.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from protoseg.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from protoseg.datamodules.wsss import (
    TissueImageStore,
    find_masked_records,
    find_training_records,
)
from protoseg.io.errors import DataError
from protoseg.io.images import read_rgb
from protoseg.io.outputs import check_output_file
from protoseg.io.prototype_files import IGNORE, Clusters, load_clusters, write_names
from protoseg.modules.prototypes import (
    build_embedder,
    nearest_prototype,
    pad_to_stride,
    window_mean,
)
from protoseg.usage import ToolParser


def patch_classes(indices: np.ndarray, stride: int, window: int, num_classes: int) -> np.ndarray:
    """The class of the ``window`` px patch around every embedding cell of an (H, W) map of
    class indices, as a pathologist would call it: ``num_classes`` (the background) where
    background covers more than half of the patch, else its most frequent tissue class.

    Returns:
        (ceil(H / stride) * ceil(W / stride),) int64, row by row.
    """
    one_hot = torch.from_numpy(
        np.eye(num_classes + 1, dtype=np.float32)[np.minimum(indices, num_classes)]
    ).permute(2, 0, 1)[None]
    cells = F.avg_pool2d(pad_to_stride(one_hot, stride), stride)
    shares = window_mean(cells, window // stride)[0].flatten(1)
    tissue = shares[:num_classes].argmax(dim=0)
    background = shares[num_classes] > 0.5
    return torch.where(background, num_classes, tissue).numpy().astype(np.int64)


def cell_embeddings(embedder: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(N, D) embeddings of an (H, W, 3) uint8 image's cells, row by row."""
    grid = embedder(normalize(image, IMAGENET_MEAN, IMAGENET_STD)[None])[0].numpy()
    return grid.reshape(grid.shape[0], -1).T


@torch.no_grad()
def annotated_patches(
    clusters: Clusters, root: Path, stems: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings (N, D) and true classes (N,) (:func:`patch_classes`) of the patch of
    every embedding cell of the named images of a masked split (``img/`` + ``mask/``)."""
    records = {r.stem: r for r in find_masked_records(root)}
    missing = [s for s in stems if s not in records or records[s].mask_path is None]
    if missing:
        raise DataError(f"{root}: no image with a mask for {', '.join(missing)}")
    embedder = build_embedder(clusters.embedder).eval()
    store = TissueImageStore(clusters.classes)
    embeddings, classes = [], []
    for stem in stems:
        image, indices = store.load(records[stem])
        assert indices is not None
        embeddings.append(cell_embeddings(embedder, image))
        count = clusters.classes.num_classes
        classes.append(patch_classes(indices, embedder.stride, embedder.window, count))
    return np.concatenate(embeddings), np.concatenate(classes)


@torch.no_grad()
def labelled_patches(clusters: Clusters, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings (N, D) and classes (N,) of every embedding cell of the images of a
    folder whose image-level label (in the file name) names exactly one class: the class of
    that label (images with several classes or none say nothing about a patch).

    Raises:
        DataError: no image in ``folder`` has a one-class label.
    """
    count = clusters.classes.num_classes
    records = [r for r in find_training_records(folder, count) if r.labels and sum(r.labels) == 1]
    if not records:
        raise DataError(f"{folder}: no image has an image-level label of one class")
    embedder = build_embedder(clusters.embedder).eval()
    embeddings, classes = [], []
    for record in records:
        embeddings.append(cell_embeddings(embedder, read_rgb(record.image_path)))
        classes.append(np.full(embeddings[-1].shape[0], record.labels.index(1), np.int64))
    return np.concatenate(embeddings), np.concatenate(classes)


def simulated_names(
    clusters: Clusters,
    embeddings: np.ndarray,
    classes: np.ndarray,
    exemplars: int = 10,
    purity: float = 0.8,
    given: dict[int, str] | None = None,
) -> dict[int, str]:
    """Each cluster's name from annotated patches (see the module's docstring); with
    ``given`` (names from another source, e.g. masks), only the clusters it leaves ``ignore``
    are named from these patches (e.g. those of images whose image-level label names one
    class: each such patch shows that class, or glass that a mask-named cluster holds)."""
    assignment, _ = nearest_prototype(embeddings, clusters.centroids)
    names = clusters.classes.output_names
    named: dict[int, str] = {}
    for k, centroid in enumerate(clusters.centroids):
        if given is not None and given[k] != IGNORE:
            named[k] = given[k]
            continue
        members = np.flatnonzero(assignment == k)
        nearest = members[np.argsort(-(embeddings[members] @ centroid), kind="stable")][:exemplars]
        votes = np.bincount(classes[nearest], minlength=256)[: len(names)]
        # Out of ``exemplars``: a cluster holding fewer annotated patches has less evidence.
        share = votes.max() / exemplars if len(nearest) else 0.0
        named[k] = names[int(votes.argmax())] if share >= purity else IGNORE
    return named


def main(argv: Sequence[str] | None = None) -> int:
    """``protoseg name-clusters --clusters FILE --root SPLIT --images STEM ... --output FILE``.

    Raises:
        DataError: naming the file or option: unreadable clusters, a split without the named
            images' masks, ``--exemplars`` < 1, ``--purity`` outside (0, 1], or an output
            that is a folder or the clusters file.
    """
    parser = ToolParser(
        prog="protoseg name-clusters",
        description="Name the clusters of a prototype stage from the masks of a few annotated "
        "images (a simulated pathologist); writes the gallery's names.json format.",
    )
    parser.add_argument("--clusters", required=True, help="clusters.npz of the prototype stage")
    parser.add_argument("--root", required=True, help="a split with img/ and mask/")
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="stems of the images used (separate arguments, or one with commas or spaces)",
    )
    parser.add_argument(
        "--labelled",
        default=None,
        help="a folder of images with image-level labels in their names (the training "
        "patches): clusters the masks leave unnamed are named from its one-class images",
    )
    parser.add_argument("--output", required=True, help="names file to write (JSON)")
    parser.add_argument("--exemplars", type=int, default=10, help="patches judged per cluster")
    parser.add_argument("--purity", type=float, default=0.8, help="least share of one class")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    args.images = [stem for value in args.images for stem in value.replace(",", " ").split()]
    if args.exemplars < 1:
        parser.error(f"--exemplars {args.exemplars}: need at least 1 patch per cluster")
    if not 0 < args.purity <= 1:
        parser.error(f"--purity {args.purity}: a share of patches, in (0, 1]")
    if not args.images:
        parser.error("--images: no image stem given")
    check_output_file(args.output, [args.clusters], "--output")
    clusters = load_clusters(args.clusters)
    embeddings, classes = annotated_patches(clusters, Path(args.root), args.images)
    names = simulated_names(clusters, embeddings, classes, args.exemplars, args.purity)
    info: dict[str, Any] = {
        "oracle": f"masks of {len(args.images)} images of {args.root}",
        "images": list(args.images),
    }
    if args.labelled is not None:
        by_mask = sum(name != IGNORE for name in names.values())
        embeddings, classes = labelled_patches(clusters, Path(args.labelled))
        names = simulated_names(
            clusters, embeddings, classes, args.exemplars, args.purity, given=names
        )
        info["oracle"] += f", then the one-class image-level labels of {args.labelled}"
        info["named_by_masks"] = by_mask
    named = sum(name != IGNORE for name in names.values())
    info["named"] = named
    path = write_names(args.output, names, **info)
    print(
        f"protoseg: {named} of {len(names)} clusters named from {len(args.images)} masks"
        f"{'' if args.labelled is None else ' and one-class image labels'} -> {path.resolve()}"
    )
    return 0

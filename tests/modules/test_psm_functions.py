"""PSM's pure functions: gradient aggregation, pixel clustering, cell points and classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoseg.modules.activation_net import ShallowActivationNet
from protoseg.modules.psm import (
    activation_from_gradients,
    cell_points,
    classify_cells,
    cluster_pixels,
    colour_prior_mask,
    foreground_cluster,
    gradient_activation_map,
    jet_bgr,
    normalize_per_image,
    psm_binary_mask,
    smoothed_cell_cue,
)


def test_normalize_per_image_scales_each_image_to_unit_range() -> None:
    maps = torch.stack([torch.arange(4.0).view(1, 2, 2), torch.full((1, 2, 2), 3.0)])
    out = normalize_per_image(maps)
    assert out[0].flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert (out[1] == 0).all()


def test_aggregation_matches_a_loop_reference() -> None:
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    gradients = [torch.randn_like(f) for f in features]
    for mode in ("elementwise", "gradcam"):
        out = activation_from_gradients(features, gradients, (8, 8), mode)
        assert out.shape == (2, 1, 8, 8)
        for b in range(2):
            total = torch.zeros(8, 8)
            for a, g in zip(features, gradients, strict=True):
                layer = torch.zeros(a.shape[-2:])
                for c in range(a.shape[1]):
                    if mode == "elementwise":
                        layer += (g[b, c] * a[b, c]).abs()
                    else:
                        layer += g[b, c].mean() * a[b, c]
                layer = layer.clamp_min(0)[None, None]
                layer = F.interpolate(layer, size=(8, 8), mode="bilinear", align_corners=False)[
                    0, 0
                ]
                total += (layer - layer.min()) / (layer.max() - layer.min())
            expected = (total - total.min()) / (total.max() - total.min())
            torch.testing.assert_close(out[b, 0], expected, atol=1e-5, rtol=0)


def test_gradient_map_of_a_network_has_the_input_size_and_is_per_image() -> None:
    torch.manual_seed(0)
    net = ShallowActivationNet("resnet18", out_indices=(0, 1)).eval()
    images = torch.randn(2, 3, 40, 48)
    maps = net(images)
    loss = maps[-1].pow(2).mean(dim=(1, 2, 3)).sum()
    out = gradient_activation_map(maps, loss, (40, 48))
    assert out.shape == (2, 1, 40, 48)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    # The same image alone gives the same map: no mixing between images in eval mode.
    single = net(images[:1])
    alone = gradient_activation_map(single, single[-1].pow(2).mean(), (40, 48))
    torch.testing.assert_close(alone[0], out[0], atol=1e-4, rtol=0)


def synthetic_he(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pink background with purple disks; returns the image and the true nuclei mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), bool)
    for cy, cx in [(12, 12), (12, 45), (40, 20), (48, 50)]:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    image = np.empty((size, size, 3))
    image[:] = (230, 190, 215)
    image[truth] = (90, 60, 140)
    image += rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_clustering_finds_the_nuclei_of_a_synthetic_image() -> None:
    image, truth = synthetic_he()
    # An activation map that agrees with the colour, plus noise.
    activation = truth * 0.7 + np.random.default_rng(1).uniform(0, 0.3, truth.shape)
    for k in (2, 3):
        mask = psm_binary_mask(smoothed_cell_cue(image), activation, num_clusters=k)
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.9, (k, dice)


def test_activation_cue_decides_where_colour_is_ambiguous() -> None:
    image = np.full((32, 32, 3), 150, np.uint8)  # flat grey: colour says nothing
    activation = np.zeros((32, 32))
    activation[8:16, 8:16] = 1.0
    mask = psm_binary_mask(smoothed_cell_cue(image, sigma=0.0), activation, num_clusters=2)
    assert mask[8:16, 8:16].all() and mask.sum() == 64


def test_cluster_pixels_subsamples_but_labels_every_pixel() -> None:
    rng = np.random.default_rng(0)
    cues = np.concatenate([rng.normal(0, 0.1, (500, 2)), rng.normal(3, 0.1, (300, 2))])
    labels, centers = cluster_pixels(cues, 2, max_samples=100)
    assert labels.shape == (800,)
    assert len(set(labels[:500])) == 1 and len(set(labels[500:])) == 1
    assert labels[600] == foreground_cluster(centers)


def test_cell_points_and_classes_on_ihc_like_cells() -> None:
    instances = np.zeros((40, 40), np.int32)
    instances[5:10, 5:10] = 1  # centre (x, y) = (7, 7)
    instances[20:26, 30:36] = 2  # centre (32.5, 22.5)
    instances[30:34, 4:8] = 3
    image = np.full((40, 40, 3), 235, np.uint8)
    image[instances == 1] = (60, 70, 150)  # blue: hematoxylin (negative)
    image[instances == 2] = (140, 80, 30)  # brown: DAB (positive)
    image[instances == 3] = (70, 80, 155)
    points = cell_points(instances)
    np.testing.assert_allclose(points, [[7, 7], [32.5, 22.5], [5.5, 31.5]])
    classes = classify_cells(image, instances, num_classes=2)
    assert classes.tolist() == [0, 1, 0]
    assert classify_cells(image, np.zeros_like(instances), 2).shape == (0,)


def test_gradcam_map_of_an_untrained_network_follows_real_nuclei(monuseg_train: Path) -> None:
    """On a real MoNuSeg crop the Grad-CAM-aggregated PSM of a random-init activation network
    is already strongly structured by the annotated nuclei. Its sign depends on the init
    (this seed lights up nuclei; others light up the tissue around them, which
    :func:`pixel_cues` orients away), so the test bounds the absolute correlation."""
    from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
    from protoseg.io.images import read_instance_png, read_rgb
    from protoseg.lightning_modules.psm import PSMModule

    stem = sorted(p.stem for p in (monuseg_train / "images").glob("*.tif"))[0]
    image = read_rgb(monuseg_train / "images" / f"{stem}.tif")[:192, :192]
    nuclei = read_instance_png(monuseg_train / "labels" / f"{stem}.png")[:192, :192] > 0
    torch.manual_seed(0)
    model = PSMModule(
        ShallowActivationNet("resnet18", out_indices=(0, 1, 2)), aggregation="gradcam"
    )
    activation = model(normalize(image, IMAGENET_MEAN, IMAGENET_STD)[None])[0, 0].numpy()
    assert activation.shape == (192, 192)
    # Measured: 0.59 (seed 0); the elementwise aggregation gives only ~0.1 here.
    assert abs(np.corrcoef(activation.ravel(), nuclei.ravel())[0, 1]) > 0.3


def test_anti_correlated_activation_is_oriented_by_the_colour_cue() -> None:
    image, truth = synthetic_he()
    activation = np.where(truth, 0.1, 0.9)  # lights up the background, not the nuclei
    mask = psm_binary_mask(smoothed_cell_cue(image), activation, num_clusters=2)
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9


def test_jet_matches_opencv_and_colour_prior_keeps_the_dark_active_cluster() -> None:
    cv2 = pytest.importorskip("cv2")
    values = np.arange(256, dtype=np.uint8).reshape(1, -1)
    reference = cv2.applyColorMap(values, cv2.COLORMAP_JET)[0] / 255.0
    np.testing.assert_allclose(jet_bgr(values / 255.0)[0], reference, atol=1 / 255)
    # Dark purple nuclei where the map is high, pink stroma and white glass elsewhere.
    image = np.full((30, 30, 3), (235, 170, 205), np.uint8)
    image[:, 20:] = 245
    image[5:12, 5:12] = (80, 60, 150)
    activation = np.full((30, 30), 0.2)
    activation[5:12, 5:12] = 0.9
    mask = colour_prior_mask(image, activation, num_clusters=3)
    assert mask[5:12, 5:12].all() and mask.sum() == 49

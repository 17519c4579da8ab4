"""View augmentations: shapes, range, device, and that the geometric ones really happen."""

from __future__ import annotations

import pytest
import torch

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.modules.ssl_augment import (
    MultiCropAugment,
    PathologyViewAugment,
    RandomHEDJitter,
    hed_jitter,
    random_crop_boxes,
)

PLAIN = dict(  # every random step off, no normalisation
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    hflip=0.0,
    vflip=0.0,
    rot90=False,
    hed_jitter=0.0,
    color_jitter_p=0.0,
    blur_p=0.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


def test_view_shape_range_and_device() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 48, 40)
    views = PathologyViewAugment(size=32, grayscale_p=0.5)(images)
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.float32
    assert views.device == images.device
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = views * std + mean
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_plain_view_is_the_input() -> None:
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(PathologyViewAugment(32, **PLAIN)(images), images, atol=1e-4, rtol=0)


def test_vertical_flip_happens() -> None:
    images = torch.rand(2, 3, 32, 32)
    views = PathologyViewAugment(32, **{**PLAIN, "vflip": 1.0})(images)
    torch.testing.assert_close(views, images.flip(2), atol=1e-4, rtol=0)


def test_rot90_turns_each_image_by_its_own_multiple() -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 3, 16, 16)
    views = PathologyViewAugment(16, **{**PLAIN, "rot90": True})(images)
    turns = []
    for image, view in zip(images, views, strict=True):
        errors = [(torch.rot90(image, k, dims=(1, 2)) - view).abs().max() for k in range(4)]
        assert min(errors) < 1e-4
        turns.append(int(torch.stack(errors).argmin()))
    assert len(set(turns)) >= 3


def test_hed_jitter_with_zero_strength_is_identity() -> None:
    images = torch.rand(3, 3, 8, 8)
    identity = hed_jitter(images, torch.ones(3, 3), torch.zeros(3, 3))
    torch.testing.assert_close(identity, images, atol=1e-4, rtol=0)
    assert RandomHEDJitter(0.0)(images) is images


def test_hed_jitter_scales_and_shifts_stain_densities() -> None:
    # A pixel stained by hematoxylin alone, Ruifrok & Johnston's H vector in optical density.
    hematoxylin, eosin = torch.tensor([0.65, 0.70, 0.29]), torch.tensor([0.07, 0.99, 0.11])
    images = torch.exp(-0.8 * hematoxylin).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    jittered = hed_jitter(images, torch.tensor([[1.5, 1.0, 1.0]]), torch.tensor([[0, 0.1, 0]]))
    expected = torch.exp(-(1.2 * hematoxylin + 0.1 * eosin)).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    torch.testing.assert_close(jittered, expected, atol=1e-5, rtol=0)
    random = RandomHEDJitter(0.2)(torch.rand(2, 3, 8, 8))
    assert random.shape == (2, 3, 8, 8) and random.min() >= 0 and random.max() <= 1


def test_crop_boxes_stay_inside_and_magnification_widens_them() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 3, 100, 100)
    boxes = random_crop_boxes(images, (0.1, 0.2), (3 / 4, 4 / 3))
    assert boxes.shape == (64, 4, 2)
    assert boxes.min() >= 0 and boxes.max() <= 99 + 1e-4
    wide = random_crop_boxes(images, (0.1, 0.2), (3 / 4, 4 / 3), magnifications=(0.5,))
    width = boxes[:, 1, 0] - boxes[:, 0, 0]
    wide_width = wide[:, 1, 0] - wide[:, 0, 0]
    assert wide_width.mean() > 1.8 * width.mean()


def test_multi_crop_returns_global_then_local_views() -> None:
    torch.manual_seed(0)
    views = MultiCropAugment(32, 16, num_local=3, magnifications=(1.0, 0.5))(
        torch.rand(4, 3, 64, 64)
    )
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert not torch.allclose(views[0], views[1])


@pytest.mark.parametrize("bad", [(), (0.0,), (1.0, -0.5)])
def test_bad_magnifications_are_refused(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="magnifications"):
        PathologyViewAugment(16, magnifications=bad)

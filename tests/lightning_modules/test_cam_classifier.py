"""CAMClassifierModule's image-level labels for images without one: the predicted classes
(``label_threshold``), and validation CAM pseudo masks on given or predicted labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from protoseg.lightning_modules.cam_classifier import CAMClassifierModule

SIDE = 8


class FixedNet(nn.Module):
    """A CAM network with set logits and maps: class k's map is highest in column band k."""

    num_classes = 3

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logits = torch.logit(torch.tensor([probs]))
        maps = torch.full((1, 3, SIDE, SIDE), -2.0)
        for k in range(3):
            maps[0, k, :, k * 3 : k * 3 + 3] = 2.0
        self.maps = maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = images.shape[0]
        return self.logits.expand(batch, -1), self.maps.expand(batch, -1, -1, -1)

    @staticmethod
    def normalise_cams(maps: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(maps)


def module(probs: list[float], **kwargs) -> CAMClassifierModule:
    return CAMClassifierModule(FixedNet(probs), warmup_steps=0, **kwargs).eval()


def test_predicted_labels_are_the_classes_above_the_threshold_and_the_best() -> None:
    images = torch.zeros(1, 3, SIDE, SIDE)
    assert module([0.9, 0.3, 0.1]).predicted_labels(images).tolist() == [[True, False, False]]
    low = module([0.9, 0.3, 0.1], label_threshold=0.2)
    assert low.predicted_labels(images).tolist() == [[True, True, False]]
    # No class above the threshold: the most probable one.
    assert module([0.2, 0.4, 0.1]).predicted_labels(images).tolist() == [[False, True, False]]


def test_cam_pseudo_mask_without_a_label_keeps_the_predicted_classes() -> None:
    image = torch.zeros(1, 3, SIDE, SIDE)  # ImageNet-normalised grey: tissue, not glass
    net = module([0.9, 0.6, 0.1])
    classes, cams, present, _ = net.cam_pseudo_mask(image, None, rotations=1)
    assert present.tolist() == [True, True, False] and cams.shape == (3, SIDE, SIDE)
    assert set(np.unique(classes).tolist()) == {0, 1}
    given, _, _, _ = net.cam_pseudo_mask(image, torch.tensor([1.0, 1.0, 1.0]), rotations=1)
    assert set(np.unique(given).tolist()) == {0, 1, 2}


@pytest.mark.parametrize(("val_labels", "stroma_iou"), [("given", 0.6), ("predicted", 0.0)])
def test_validation_scores_given_or_predicted_labels(val_labels: str, stroma_iou: float) -> None:
    # The truth: tumor in columns 0-2, stroma in 3-7; the CAMs: stroma highest in 3-5 (6-7:
    # a tie of tumor and stroma, tumor); the classifier predicts tumor alone.
    mask = torch.zeros(1, SIDE, SIDE, dtype=torch.long)
    mask[:, :, 3:] = 1
    batch = {
        "image": torch.zeros(1, 3, SIDE, SIDE),
        "mask": mask,
        "labels": torch.tensor([[1.0, 1.0, 0.0]]),
    }
    net = module([0.9, 0.3, 0.1], val_labels=val_labels, num_log_images=0)
    net.validation_step(batch, 0)
    scores = net.val_metrics.compute()
    assert float(scores["val/iou_stroma"]) == pytest.approx(stroma_iou)


def test_bad_label_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="label_threshold"):
        module([0.5, 0.5, 0.5], label_threshold=1.0)
    with pytest.raises(ValueError, match="val_labels"):
        module([0.5, 0.5, 0.5], val_labels="mask")

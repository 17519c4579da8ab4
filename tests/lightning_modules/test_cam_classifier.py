"""CAMClassifierModule's image-level labels for images without one: the predicted classes
(``label_threshold``), and validation CAM pseudo masks on given or predicted labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from protoseg.lightning_modules.cam_classifier import CAMClassifierModule, training_image_labels
from protoseg.modules.image_labels import balanced_pos_weight, midpoint_logits

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
    with pytest.raises(ValueError, match="pos_weight"):
        module([0.5, 0.5, 0.5], pos_weight="inverse")
    with pytest.raises(ValueError, match="pos_weight"):
        module([0.5, 0.5, 0.5], pos_weight=[1.0, 2.0])


def test_balanced_pos_weight_is_negatives_over_positives() -> None:
    # WSSS4LUAD's 41 training labels: tumor 35, stroma 38, normal 3 images.
    labels = np.zeros((41, 3), bool)
    labels[:35, 0], labels[:38, 1], labels[:3, 2] = True, True, True
    weight = balanced_pos_weight(labels)
    assert weight.tolist() == pytest.approx([6 / 35, 3 / 38, 38 / 3])
    # A class no image (or every image) holds keeps weight 1.
    assert balanced_pos_weight(np.array([[1, 0], [1, 0]])).tolist() == [1.0, 1.0]


def test_pos_weight_weighs_the_positive_term_of_the_bce() -> None:
    logits = [0.7, 0.2, 0.4]
    batch = {"image": torch.zeros(2, 3, SIDE, SIDE), "labels": torch.tensor([[1.0, 0, 1]] * 2)}
    net = module(logits, pos_weight=[2.0, 3.0, 0.5]).train()
    loss = net.training_step(batch, 0)
    # Reference: -(w y log p + (1 - y) log(1 - p)), averaged over the batch and classes.
    p = torch.tensor(logits)
    y, w = torch.tensor([1.0, 0, 1]), torch.tensor([2.0, 3.0, 0.5])
    reference = -(w * y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)


class LabelledData:
    """A datamodule's training records, as WSSSDataModule lists them."""

    def __init__(self, labels: list[tuple[int, ...] | None]) -> None:
        self.labels = labels

    def train_records(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(labels=label) for label in self.labels]


def test_balanced_pos_weight_reads_the_training_labels_at_fit_start() -> None:
    net = module([0.5, 0.5, 0.5], pos_weight="balanced")
    assert net.pos_weight is None
    data = LabelledData([(1, 1, 0), (1, 0, 0), (0, 1, 1), (1, 1, 0)])
    net.trainer = SimpleNamespace(datamodule=data)  # what on_fit_start reads
    net.on_fit_start()
    assert net.pos_weight.tolist() == pytest.approx([1 / 3, 1 / 3, 3.0])
    assert training_image_labels(data).sum(0).tolist() == [3, 3, 1]
    with pytest.raises(ValueError, match="image-level labels"):
        training_image_labels(LabelledData([(1, 0, 0), None]))
    with pytest.raises(ValueError, match="image-level labels"):
        training_image_labels(object())


def test_midpoint_logits_halve_the_gap_between_classes_held_and_not() -> None:
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 3.0, 5.0], [-2.0, 1.0, 5.0]])
    labels = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1]])
    # tumor: lowest held 0.5, highest not held -2 -> -0.75; stroma: (1 + -1) / 2 = 0;
    # normal: every image holds it -> 0 (probability 0.5).
    assert midpoint_logits(logits, labels).tolist() == pytest.approx([-0.75, 0.0, 0.0])
    with pytest.raises(ValueError, match="differ"):
        midpoint_logits(logits, labels[:2])


class ChannelNet(nn.Module):
    """Logits = each image's channel means (class k = channel k); maps = the image."""

    num_classes = 3

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images.mean(dim=(2, 3)), images

    @staticmethod
    def normalise_cams(maps: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(maps)


class TrainingImages:
    """A datamodule's whole training images: channel k's value is class k's logit."""

    def __init__(self, logits: list[list[float]], labels: list[list[int]]) -> None:
        self.items = [
            {
                "image": torch.tensor(v)[:, None, None].expand(3, SIDE, SIDE),
                "labels": torch.tensor(y),
            }
            for v, y in zip(logits, labels, strict=True)
        ]

    def training_images(self) -> list[dict[str, torch.Tensor]]:
        return self.items


def test_label_threshold_training_is_calibrated_on_the_training_images_and_saved() -> None:
    net = CAMClassifierModule(ChannelNet(), warmup_steps=0, label_threshold="training").eval()
    with pytest.raises(ValueError, match="training_images"):
        net.predicted_labels(torch.zeros(1, 3, SIDE, SIDE))
    data = TrainingImages([[4.0, 1.0, -1.0], [2.0, 3.0, 0.5]], [[1, 0, 0], [1, 1, 1]])
    state = SimpleNamespace(fn="validate")
    net.trainer = SimpleNamespace(datamodule=data, state=state, global_step=7)
    image = torch.tensor([3.0, 1.5, 0.0])[:, None, None].expand(1, 3, SIDE, SIDE)
    # Decision logits: tumor 0 (every image holds it), stroma 2, normal -0.25.
    assert net.predicted_labels(image).tolist() == [[True, False, True]]
    checkpoint: dict = {"global_step": 7}
    net.on_save_checkpoint(checkpoint)
    assert checkpoint["label_logits"] == pytest.approx([0.0, 2.0, -0.25])
    loaded = CAMClassifierModule(ChannelNet(), warmup_steps=0, label_threshold="training").eval()
    loaded.on_load_checkpoint(checkpoint)  # no datamodule needed any more
    assert loaded.predicted_labels(image).tolist() == [[True, False, True]]

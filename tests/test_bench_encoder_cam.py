"""benchmarks/wsss4luad_encoder_cam.py: the class layer learns image-level labels, SAM masks
overrule the CAM only where they agree (and the CAM is unsure). Its embeddings come from
protoseg's SamEncoderEmbedder, tested in tests/modules/test_sam_encoder.py."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.wsss4luad_encoder_cam import (
    EncoderCam,
    sam_refined,
    train_head,
)


def test_class_layer_learns_image_labels() -> None:
    """Class 0 lives in channel 0 of a few cells, class 1 in channel 1: image-level labels
    alone teach the layer where each class is."""
    rng = np.random.default_rng(0)
    feats, labels = [], []
    for i in range(8):
        f = torch.from_numpy(rng.normal(0, 0.1, (4, 16, 16))).float()
        label = [float(i % 2 == 0), float(i % 4 < 2 or i % 2 == 1)]
        for k, present in enumerate(label):
            if present:
                f[k, 4 * k : 4 * k + 4, :] += 3.0
        feats.append(f)
        labels.append(label)
    head, mean, std = train_head(feats, torch.tensor(labels), 5.0, 16, 100, 0)
    probs = EncoderCam(head, mean, std)(feats[0], (16, 16))
    assert probs.shape == (2, 16, 16)
    assert probs[0, :4].mean() > probs[0, 8:].mean() + 0.2
    assert probs[1, 4:8].mean() > probs[1, 12:].mean() + 0.2


def test_sam_refined_agreement_and_margin() -> None:
    classes = np.zeros((256, 256), np.uint8)
    classes[:, 128:] = 1
    probs = np.zeros((3, 256, 256), np.float32)
    probs[0], probs[1] = np.where(classes == 0, 0.9, 0.1), np.where(classes == 1, 0.9, 0.1)
    probs[:, :, 120:136] = [[[0.5]], [[0.45]], [[0.0]]]  # unsure band at the boundary
    feat = torch.zeros(256, 64, 64)
    window = (slice(0, 256), slice(0, 256))
    agreeing = np.zeros((256, 256), bool)
    agreeing[:, 100:130] = True  # 28 of its 30 columns in class 0's CAM mask
    wrong = np.zeros((256, 256), bool)
    wrong[:, 140:250] = True  # in class 1's mask entirely
    decoded = [(0, window, agreeing, classes == 0), (0, window, wrong, classes == 0)]
    present = np.array([True, True, False])
    refined, kept = sam_refined(decoded, feat, probs, classes, present, 0.9, None)
    assert kept == 1
    assert (refined[:, 128:130] == 0).all() and (refined[:, 140:] == 1).all()
    # With a margin, the SAM mask changes only the unsure band.
    refined, _ = sam_refined(decoded, feat, probs, classes, present, 0.9, 0.3)
    assert (refined[:, 128:130] == 0).all() and (refined[:, :100] == 0).all()
    assert (refined[:, 136:] == 1).all()

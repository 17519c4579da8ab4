"""``NucleiMetrics``: per-image means of the functional scores, prefix, reset, DDP-style sync."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.metrics import METRIC_NAMES, NucleiMetrics, nuclei_scores


def _random_instances(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Blocky instance maps: a coarse random label grid upsampled 4x, so objects overlap."""
    coarse = rng.integers(0, 6, size=(*shape[:-2], shape[-2] // 4, shape[-1] // 4))
    return coarse.repeat(4, axis=-2).repeat(4, axis=-1)


def _pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    target = _random_instances(rng, shape)
    pred = np.roll(target, 1, axis=-1)
    pred[_random_instances(rng, shape) == 0] = 0
    return pred, target


def _expected_means(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    per_image = [nuclei_scores(pred, target) for pred, target in pairs]
    return {name: float(np.mean([s[name] for s in per_image])) for name in METRIC_NAMES}


def _as_floats(results: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value) for key, value in results.items()}


def test_mean_of_per_image_scores_over_batches() -> None:
    rng = np.random.default_rng(0)
    batch_a, batch_b = _pair(rng, (3, 16, 16)), _pair(rng, (2, 16, 16))
    single = _pair(rng, (16, 16))
    listed = [_pair(rng, (24, 32)), _pair(rng, (12, 8))]  # images of different sizes
    metric = NucleiMetrics()
    for pred, target in (batch_a, batch_b, single):
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    metric.update(
        [torch.from_numpy(p) for p, _ in listed], [torch.from_numpy(t) for _, t in listed]
    )
    pairs = [
        *zip(batch_a[0], batch_a[1], strict=True),
        *zip(batch_b[0], batch_b[1], strict=True),
        single,
        *listed,
    ]
    assert len(pairs) == 8
    expected = _expected_means(pairs)
    assert len(set(expected.values())) > 3  # not a degenerate all-equal case
    assert _as_floats(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_prefix_and_iou_threshold() -> None:
    rng = np.random.default_rng(1)
    pred, target = _pair(rng, (2, 16, 16))
    metric = NucleiMetrics(prefix="val/", iou_threshold=0.75)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    results = _as_floats(metric.compute())
    assert sorted(results) == sorted(f"val/{name}" for name in METRIC_NAMES)
    per_image = [nuclei_scores(p, t, iou_threshold=0.75) for p, t in zip(pred, target, strict=True)]
    assert results["val/pq"] == pytest.approx(np.mean([s["pq"] for s in per_image]), abs=1e-6)
    with pytest.raises(ValueError, match="iou_threshold"):
        NucleiMetrics(iou_threshold=0.25)


def test_compute_before_update_is_nan_and_reset_clears() -> None:
    metric = NucleiMetrics()
    with pytest.warns(UserWarning, match="before the ``update``"):
        results = metric.compute()
    assert all(torch.isnan(value) for value in results.values())
    rng = np.random.default_rng(2)
    first, second = _pair(rng, (2, 16, 16)), _pair(rng, (2, 16, 16))
    metric.update(torch.from_numpy(first[0]), torch.from_numpy(first[1]))
    metric.compute()
    metric.reset()
    assert all(getattr(metric, name) == [] for name in METRIC_NAMES)
    metric.update(torch.from_numpy(second[0]), torch.from_numpy(second[1]))
    expected = _expected_means(list(zip(second[0], second[1], strict=True)))
    assert _as_floats(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_scores_computed_elsewhere_count_like_maps() -> None:
    """Per-image scores (e.g. from a worker process) give the mean the maps would."""
    rng = np.random.default_rng(1)
    pairs = [_pair(rng, (16, 16)) for _ in range(3)]
    from_maps, from_scores = NucleiMetrics(), NucleiMetrics()
    for pred, target in pairs:
        from_maps.update(torch.from_numpy(pred), torch.from_numpy(target))
        from_scores.update(scores=[nuclei_scores(pred, target)])
    assert _as_floats(from_scores.compute()) == _as_floats(from_maps.compute())
    with pytest.raises(ValueError, match="preds and targets, or scores"):
        from_scores.update()
    with pytest.raises(ValueError, match="preds and targets, or scores"):
        pred, target = (torch.from_numpy(a) for a in pairs[0])
        from_scores.update(pred, target, scores=[nuclei_scores(*pairs[0])])
    with pytest.raises(ValueError, match=r"lack \['aji'"):
        from_scores.update(scores=[{"dice": 1.0}])


def test_invalid_inputs() -> None:
    metric = NucleiMetrics()
    zeros = torch.zeros(2, 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="2 predicted and 3 target"):
        metric.update(zeros, torch.zeros(3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(8, 9\)"):
        metric.update(zeros, torch.zeros(2, 8, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="B, H, W"):
        metric.update(zeros[None], zeros[None])


@pytest.mark.parametrize("local_images", [2, 0])
def test_states_gather_like_ddp(local_images: int) -> None:
    """A fake all-gather hands over a second process's states, as DDP would at compute."""
    rng = np.random.default_rng(3)
    local, remote = _pair(rng, (local_images, 16, 16)), _pair(rng, (3, 16, 16))
    remote_metric = NucleiMetrics()
    remote_metric.update(torch.from_numpy(remote[0]), torch.from_numpy(remote[1]))
    # torchmetrics gathers the states in the order they were added.
    remote_states = iter([torch.cat(getattr(remote_metric, name)) for name in METRIC_NAMES])

    def fake_all_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, next(remote_states)]

    metric = NucleiMetrics()
    metric.dist_sync_fn = fake_all_gather
    metric.distributed_available_fn = lambda: True
    if local_images:
        metric.update(torch.from_numpy(local[0]), torch.from_numpy(local[1]))
    pairs = [*zip(local[0], local[1], strict=True), *zip(remote[0], remote[1], strict=True)]
    # A process that saw no image still joins the gather; torchmetrics warns about it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The ``compute`` method", UserWarning)
        results = _as_floats(metric.compute())
    assert results == pytest.approx(_expected_means(pairs), abs=1e-6)


def test_real_label_against_itself(monuseg_train: Path) -> None:
    path = sorted((monuseg_train / "labels").glob("*.png"))[0]
    label = torch.from_numpy(np.array(Image.open(path)).astype(np.int64))
    metric = NucleiMetrics(prefix="test/")
    metric.update(label[None], label[None])
    assert _as_floats(metric.compute()) == pytest.approx(
        {f"test/{name}": 1.0 for name in METRIC_NAMES}
    )

"""Post-processing strategies on given class probabilities: what each setting does."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from protoseg.postprocess import (
    CentreGuidedSplit,
    DistanceSplit,
    InstanceSplit,
    ThreeClassWatershed,
)
from protoseg.postprocess import centre_guided as centre_guided_module
from protoseg.postprocess.base import as_thresholds


def probs_of(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of (3, H, W) logits, as the head gives them."""
    return torch.from_numpy(logits).float().softmax(dim=0).numpy()


def strategy(kind: str, **kwargs: object) -> InstanceSplit:
    return {"three_class": ThreeClassWatershed, "distance": DistanceSplit}[kind](**kwargs)


def touching_discs(size: int = 64) -> np.ndarray:
    """Two touching discs, all 'inside', no boundary."""
    yy, xx = np.mgrid[:size, :size]
    discs = ((yy - 32) ** 2 + (xx - 22) ** 2 < 100) | ((yy - 32) ** 2 + (xx - 40) ** 2 < 100)
    logits = np.full((3, size, size), -10.0, np.float32)
    logits[0][~discs] = 10.0
    logits[1][discs] = 10.0
    return probs_of(logits)


def bridged_discs(size: int = 64) -> np.ndarray:
    """Two separate discs (foreground probability ~1) joined by a bar at probability 0.55."""
    yy, xx = np.mgrid[:size, :size]
    discs = ((yy - 32) ** 2 + (xx - 16) ** 2 < 64) | ((yy - 32) ** 2 + (xx - 48) ** 2 < 64)
    bridge = (abs(yy - 32) <= 6) & (xx > 16) & (xx < 48) & ~discs
    logits = np.zeros((3, size, size), np.float32)
    logits[0][~discs & ~bridge] = 10.0
    logits[1][discs] = 10.0
    # softmax of (0, log(0.55 / 0.45), -30): p(background) = 0.45 on the bar
    logits[1][bridge] = np.log(0.55 / 0.45)
    logits[2] = -30.0
    return probs_of(logits)


def test_distance_split_separates_nuclei_without_a_boundary_class() -> None:
    probs = touching_discs()
    one = ThreeClassWatershed()(probs)
    two = DistanceSplit(min_distance=5)(probs)
    assert one.max() == 1
    assert two.max() == 2
    np.testing.assert_array_equal(one > 0, two > 0)


def bridged(kind: str, threshold: float | list[float]) -> np.ndarray:
    """The instances of :func:`bridged_discs` at ``threshold``; min_distance is farther
    than the discs' centres, so a connected pair stays one object."""
    extra = {"min_distance": 40} if kind == "distance" else {}
    return strategy(kind, foreground_threshold=threshold, **extra)(bridged_discs())


@pytest.mark.parametrize("kind", ["three_class", "distance"])
def test_foreground_threshold_cuts_a_weak_bridge(kind: str) -> None:
    merged, apart = bridged(kind, 0.5), bridged(kind, 0.6)
    assert merged.max() == 1
    assert apart.max() == 2
    # only the bar goes: the discs keep every pixel
    probs = bridged_discs()
    bar = int(((probs[0] > 0.4) & (probs[0] < 0.5)).sum())
    assert int((merged > 0).sum()) - int((apart > 0).sum()) == bar
    with pytest.raises(ValueError, match="foreground_threshold"):
        strategy(kind, foreground_threshold=1.0)


@pytest.mark.parametrize("kind", ["three_class", "distance"])
def test_several_foreground_thresholds_keep_the_most_convex_split(kind: str) -> None:
    """At 0.5 the bar fuses the discs into a dumbbell; at 0.6 they stand apart, convex."""
    apart = bridged(kind, 0.6)
    np.testing.assert_array_equal(bridged(kind, [0.5, 0.6]), apart)
    np.testing.assert_array_equal(bridged(kind, [0.6, 0.5]), apart)
    for bad in ([0.5, 1.0], []):
        with pytest.raises(ValueError, match="foreground_threshold"):
            strategy(kind, foreground_threshold=bad)
    assert as_thresholds(0.6) == (0.6,) and as_thresholds([0.2, 0.9]) == (0.2, 0.9)


@pytest.mark.parametrize("kind", ["three_class", "distance"])
def test_min_peak_probability_drops_a_faint_object(kind: str) -> None:
    """A disc at foreground probability ~1 stays; one at 0.9 goes once the bar is 0.99."""
    yy, xx = np.mgrid[:64, :64]
    sure = (yy - 20) ** 2 + (xx - 20) ** 2 < 64
    faint = (yy - 44) ** 2 + (xx - 44) ** 2 < 64
    logits = np.zeros((3, 64, 64), np.float32)
    logits[0][~sure & ~faint] = 10.0
    logits[1][sure] = 10.0
    logits[1][faint] = np.log(0.9 / 0.1)  # p(background) = 0.1
    logits[2] = -30.0
    probs = probs_of(logits)
    everything = strategy(kind)(probs)
    confident = strategy(kind, min_peak_probability=0.99)(probs)
    assert everything.max() == 2
    assert confident.max() == 1
    np.testing.assert_array_equal(confident > 0, sure)
    with pytest.raises(ValueError, match="min_peak_probability"):
        strategy(kind, min_peak_probability=1.0)


@pytest.mark.parametrize("threshold", [0.5, [0.5, 0.6]])
def test_outline_opening_trims_a_spur_off_the_final_objects(threshold: float | list[float]) -> None:
    """A disc with a 2 px spur: opened by a 2 px disc the spur goes, the disc stays."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 24) ** 2 < 100
    spur = ((yy == 32) | (yy == 33)) & (xx >= 24) & (xx < 50)
    logits = np.zeros((3, 64, 64), np.float32)
    logits[0][~disc & ~spur] = 10.0
    logits[1][disc | spur] = 10.0
    logits[2] = -30.0
    probs = probs_of(logits)

    def instances(radius: int) -> np.ndarray:
        split = DistanceSplit(min_distance=40, foreground_threshold=threshold)
        split.outline_opening = radius
        return split(probs)

    np.testing.assert_array_equal(instances(0) > 0, disc | spur)
    opened = instances(2) > 0
    # the spur goes beyond its root, where a 2 px disc still fits across the junction
    assert not (opened & spur & (xx > 24 + 10 + 2)).any()
    assert (opened & disc).sum() >= 0.97 * disc.sum()
    with pytest.raises(ValueError, match="outline_opening"):
        DistanceSplit(outline_opening=-1)


def test_min_seed_area_drops_small_seeds() -> None:
    """A seed of 9 px seeds a nucleus by default (min_area 10: seeds of 5 px and more), not
    with min_seed_area 10."""
    logits = np.full((3, 32, 32), -10.0, np.float32)
    logits[0] = 10.0
    logits[0, 8:20, 8:20], logits[2, 8:20, 8:20] = -10.0, 10.0  # boundary class
    logits[1, 12:15, 12:15], logits[2, 12:15, 12:15] = 20.0, -10.0  # a 3 x 3 inside seed
    probs = probs_of(logits)
    assert ThreeClassWatershed()(probs).max() == 1
    assert ThreeClassWatershed(min_seed_area=10)(probs).max() == 0
    with pytest.raises(ValueError, match="min_seed_area"):
        ThreeClassWatershed(min_seed_area=0)


class FixedMaps(torch.nn.Module):
    """A 'detector' whose outputs (C, H, W) are given, whatever the images (logits for the
    heatmap channel, as a network gives them)."""

    def __init__(self, maps: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("maps", torch.from_numpy(maps.astype(np.float32))[None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.maps.expand(images.shape[0], -1, -1, -1)


def test_centre_guide_moves_the_split_to_the_detector_s_centres() -> None:
    """Two touching discs: a heatmap with peaks at both centres splits them, one whose only
    peak is at their neck keeps them whole (the centres lie within min_distance of it)."""
    probs = touching_discs()
    assert DistanceSplit(min_distance=15)(probs).max() == 2

    def split(*points: tuple[int, int]) -> np.ndarray:
        heat = np.full((1, 64, 64), -10.0, np.float32)
        for row, col in points:
            heat[0, row, col] = 10.0
        guided = CentreGuidedSplit(centre_net=FixedMaps(heat), min_distance=15, centre_offset=0.05)
        guide = guided.guide(torch.zeros(1, 3, 64, 64), 64, 0)
        assert guide.shape == (1, 1, 64, 64) and 0.0 <= guide.min() <= guide.max() <= 1.0
        return guided(probs, guide[0])

    assert split((32, 22), (32, 40)).max() == 2
    assert split((32, 31)).max() == 1


def test_votes_reach_the_landscape_and_the_per_piece_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probs = np.zeros((3, 32, 32), np.float32)
    probs[0] = 1.0
    probs[0, 8:24, 8:24], probs[1, 8:24, 8:24] = 0.2, 0.8
    maps = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    seen: list[tuple[np.ndarray | None, float]] = []

    def spy(candidates: list[np.ndarray], offsets=None, share_power=0.5) -> np.ndarray:  # noqa: ANN001
        seen.append((offsets, share_power))
        return candidates[0]

    monkeypatch.setattr(centre_guided_module, "most_convex_candidates", spy)
    split = CentreGuidedSplit(
        centre_net=FixedMaps(maps),
        centre_votes=True,
        vote_share_power=1.0,
        foreground_threshold=[0.3, 0.6],
        min_area=4,
    )
    split(probs, maps)
    assert len(seen) == 1 and seen[0][1] == 1.0
    np.testing.assert_array_equal(seen[0][0], maps[1:])
    binary = split.foreground(probs, 0.5)
    mixed = split.landscape(binary, maps)
    split.vote_weight = 0.0
    np.testing.assert_array_equal(split.landscape(binary, maps), maps[0])
    assert not np.array_equal(mixed, maps[0])
    split.centre_votes = False  # the heatmap alone: solidity alone chooses
    split(probs, maps)
    assert len(seen) == 2 and seen[1][0] is None
    with pytest.raises(ValueError, match="3 outputs"):
        CentreGuidedSplit(centre_net=FixedMaps(maps[:1]), centre_votes=True).landscape(
            binary, maps[:1]
        )
    with pytest.raises(ValueError, match="needs detector"):
        CentreGuidedSplit()
    with pytest.raises(ValueError, match="centre_offset"):
        CentreGuidedSplit(centre_net=FixedMaps(maps), centre_offset=0.0)


def test_workers_get_the_settings_without_the_networks() -> None:
    maps = np.zeros((1, 16, 16), np.float32)
    split = CentreGuidedSplit(centre_net=FixedMaps(maps), min_distance=9, foreground_threshold=0.4)
    copy = pickle.loads(pickle.dumps(split.detached()))
    assert not list(copy.children()) and list(split.children()), "the original keeps its net"
    assert (copy.min_distance, copy.thresholds) == (9, (0.4,))
    probs = touching_discs(16)
    np.testing.assert_array_equal(copy(probs, maps), split(probs, maps))

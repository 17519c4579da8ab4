"""From confidence maps to nuclei pseudo masks: naming the nuclei class, cleaning, splitting."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from protoseg.modules.pseudo_masks import (
    binary_to_instances,
    clean_binary,
    hematoxylin_density,
    nuclear_score,
    nuclei_from_score,
    otsu_threshold,
    refine_outlines_locally,
)


def test_purple_nuclei_carry_more_hematoxylin_than_pink_stroma() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (95, 60, 140)  # nucleus purple
    image[:, 2:] = (235, 200, 220)  # stroma pink
    density = hematoxylin_density(image)
    assert density[:, :2].min() > density[:, 2:].max()
    with pytest.raises(ValueError, match="RGB"):
        hematoxylin_density(image[..., 0])


def test_nuclear_score_is_the_hematoxylin_positive_share_of_each_class() -> None:
    # class 0: stroma (light), class 1: nuclei (dark), class 2: empty
    labels = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    density = np.array([[0.1, 0.1, 0.9, 0.8, 0.9], [0.2, 0.1, 0.7, 0.9, 0.8]])
    probs = np.full((3, 2, 5), 0.05)
    probs[labels, np.arange(2)[:, None], np.arange(5)] = 0.9
    # the Otsu threshold of the density splits {0.1, 0.1, 0.2, 0.1} from the rest, so class
    # 0 has 1 positive pixel in 5 (share 0.2) and class 1 all 5 (share 1.0)
    share = np.array([0.2, 1.0, 0.0])
    expected = np.tensordot(share, probs, axes=1)
    np.testing.assert_allclose(nuclear_score(probs, density), expected)
    assert (nuclei_from_score(expected) == (labels == 1)).all()
    with pytest.raises(ValueError, match="differ"):
        nuclear_score(probs, density[:, :4])


def test_flat_inputs_give_no_nuclei() -> None:
    flat = np.full((4, 4), 0.3)
    assert otsu_threshold(flat) > flat.max()
    assert not nuclei_from_score(flat).any()


def test_clean_binary_fills_holes_and_drops_specks() -> None:
    mask = np.zeros((40, 40), bool)
    mask[disk((20, 20), 8)] = True
    mask[20, 20] = False  # a hole
    mask[2, 2] = True  # a speck
    cleaned = clean_binary(mask, min_area=10)
    assert cleaned[20, 20] and not cleaned[2, 2]


def test_touching_nuclei_are_split_and_lone_ones_kept() -> None:
    mask = np.zeros((60, 90), bool)
    mask[disk((30, 25), 11)] = True
    mask[disk((30, 45), 11)] = True  # touches the first
    mask[disk((30, 75), 6)] = True
    instances = binary_to_instances(mask, min_distance=5)
    assert instances.dtype == np.int32 and instances.max() == 3
    assert instances[30, 20] != instances[30, 50]
    assert ((instances > 0) == mask).all()


def test_empty_mask_gives_no_instance() -> None:
    assert binary_to_instances(np.zeros((8, 8), bool)).max() == 0


def test_local_refinement_redraws_each_object_at_its_own_threshold() -> None:
    """A pale nucleus drawn too tight grows back to its outline; a dark one keeps its own."""
    density = np.zeros((64, 64))
    dark, pale = disk((16, 16), 6, shape=density.shape), disk((46, 46), 6, shape=density.shape)
    density[dark], density[pale] = 1.0, 0.3
    mask = np.zeros((64, 64), bool)
    mask[dark] = True
    mask[disk((46, 46), 3)] = True  # what a whole-image threshold between 0.3 and 1 leaves
    refined = refine_outlines_locally(density, mask, pad=6)
    expected = np.zeros((64, 64), bool)
    expected[dark] = expected[pale] = True
    assert np.array_equal(refined, expected)


def test_local_refinement_drops_objects_without_stain_and_splits_clumps() -> None:
    density = np.zeros((40, 40))
    density[10:20, 5:12] = density[10:20, 16:23] = 1.0  # two nuclei, 4 px apart
    mask = np.zeros((40, 40), bool)
    mask[9:21, 4:24] = True  # drawn as one clump
    mask[30:35, 30:35] = True  # on unstained glass
    refined = refine_outlines_locally(density, mask, pad=2)
    assert np.array_equal(refined, density > 0)
    with pytest.raises(ValueError, match="differ"):
        refine_outlines_locally(density, mask[:-1])
    with pytest.raises(ValueError, match="pad"):
        refine_outlines_locally(density, mask, pad=-1)


def test_centre_heatmap_cuts_a_clump_the_distance_alone_keeps_whole() -> None:
    rows, cols = np.mgrid[:40, :60]
    centres = [(20, 25), (20, 34)]
    mask = np.zeros((40, 60), dtype=bool)
    heat = np.zeros((40, 60))
    for cy, cx in centres:
        mask |= (rows - cy) ** 2 + (cols - cx) ** 2 <= 9**2
        heat = np.maximum(heat, np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 8.0))
    assert binary_to_instances(mask, min_distance=7).max() == 1
    split = binary_to_instances(mask, min_distance=7, centres=heat, centre_offset=0.25)
    assert split.max() == 2
    assert split[20, 25] != split[20, 34]
    # The cut falls between the two centres.
    assert split[20, 27] == split[20, 25] and split[20, 32] == split[20, 34]
    with pytest.raises(ValueError, match="shape"):
        binary_to_instances(mask, centres=heat[:10])

"""A crop's centre-detector targets, built where the crop is made.

Finding a crop's convex pseudo nuclei (``regionprops`` and their convex hulls) and drawing
their heatmap and offsets costs ~10 ms a 224 px crop on one CPU core: ~0.1 s a batch of 8.
Built in the training step, that runs in the process that feeds the accelerator, between its
steps; on a GPU, whose step of the same network takes ~0.04 s, it likely bounds the
detector (not yet measured there).
:class:`CentreTargets` is a picklable, frozen description of the targets, so the training
dataset's DataLoader workers can build them beside the network
(:class:`~protoseg.data.datasets.RandomCropDataset` ``crop_targets``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protoseg.modules.centre_votes import offsets_of_nuclei
from protoseg.modules.centres import heatmap_of_nuclei, single_nuclei

#: Batch keys of the heatmap target and its loss weight, each (B, 1, h, w) float32.
HEATMAP_KEYS = ("centre_heat", "centre_weight")
#: Batch keys of the offset target (B, 2, h, w) and its loss weight (B, 1, h, w).
OFFSET_KEYS = ("centre_offset", "centre_offset_weight")


@dataclass(frozen=True)
class CentreTargets:
    """The targets of :class:`~protoseg.lightning_modules.centre_detector.CentreDetectorModule`
    for one instance map.

    Args:
        sigma: Gaussian width of a centre's peak, px.
        min_solidity: objects at least this convex are taught as single nuclei.
        min_area: smaller objects are left out of the loss, px.
        ignore_pad: px around a left-out object also left out.
        offsets: also build the offset target and its weight.
    """

    sigma: float = 2.0
    min_solidity: float = 0.9
    min_area: int = 20
    ignore_pad: int = 2
    offsets: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys :meth:`__call__` returns, heatmap first."""
        return HEATMAP_KEYS + (OFFSET_KEYS if self.offsets else ())

    def __call__(self, instances: np.ndarray) -> dict[str, np.ndarray]:
        """Targets of an (h, w) instance map: ``centre_heat`` and ``centre_weight`` (1, h, w)
        and, with ``offsets``, ``centre_offset`` (2, h, w) and ``centre_offset_weight``
        (1, h, w), all float32. The crop's nuclei are found once for all of them."""
        singles, others = single_nuclei(instances, self.min_solidity, self.min_area)
        heat, weight = heatmap_of_nuclei(singles, others, self.sigma, self.ignore_pad)
        targets = {"centre_heat": heat[None], "centre_weight": weight[None]}
        if self.offsets:
            offset, offset_weight = offsets_of_nuclei(singles, others.shape)
            targets.update(centre_offset=offset, centre_offset_weight=offset_weight[None])
        return targets

    def batch(self, instances: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`__call__` for each map of (B, h, w) ``instances``, stacked (B, C, h, w) on
        their device: for batches whose loader did not build the targets."""
        per_crop = [self(m) for m in instances.cpu().numpy()]
        return {
            key: torch.from_numpy(np.stack([t[key] for t in per_crop])).to(instances.device)
            for key in self.keys
        }

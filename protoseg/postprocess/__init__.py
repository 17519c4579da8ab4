"""Post-processing strategies of a segmentation head: class probabilities -> nuclei instances.

Inject one as ``postprocess`` of
:class:`~protoseg.lightning_modules.segmentation.SegmentationModule`:

- :class:`~protoseg.postprocess.three_class.ThreeClassWatershed`: seeds from the inside
  class grown over the boundary class (heads trained on true labels);
- :class:`~protoseg.postprocess.distance.DistanceSplit`: the foreground split at the peaks
  of its distance transform (heads trained on pseudo masks);
- :class:`~protoseg.postprocess.centre_guided.CentreGuidedSplit`: the distance split guided
  by a frozen centre detector's heatmap and votes (the PSM chain).

Composed after a split as ``refine``: :class:`~protoseg.postprocess.sam_refine.SamRefinement`,
Segment Anything redraws each object from its box.

``docs/postprocessing.md`` lists what each setting measured.
"""

from protoseg.postprocess.base import InstanceSplit, score_instances, split_and_score
from protoseg.postprocess.centre_guided import CentreGuidedSplit
from protoseg.postprocess.distance import DistanceSplit
from protoseg.postprocess.sam_refine import SamRefinement
from protoseg.postprocess.three_class import ThreeClassWatershed

__all__ = [
    "CentreGuidedSplit",
    "DistanceSplit",
    "InstanceSplit",
    "SamRefinement",
    "ThreeClassWatershed",
    "score_instances",
    "split_and_score",
]

"""protoseg: label-free and weakly labelled nuclei segmentation pipelines on PyTorch Lightning."""

import os

# albumentations asks PyPI for a newer release whenever it is imported (a 2 s timeout, then a
# warning on machines without internet, as cluster nodes often are). The user's own setting
# wins; protoseg never needs the check.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

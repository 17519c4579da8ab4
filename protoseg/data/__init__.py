"""The data core every datamodule shares: image records and their store, training crops and
whole-image datasets, samplers, transforms and the three-class targets.

Nothing here knows a LightningDataModule or a LightningModule (``tests/test_layers.py``):
:mod:`protoseg.datamodules` builds on it, and so do the modules and the scoring tools.
"""

"""Whole slides for the tissue stages: :class:`WSIPredictDataModule` tiles with the tissue
classes of a dataset, so that predict writes one class map per slide."""

from __future__ import annotations

from protoseg.datamodules.slide_predict import WSIPredictDataModule
from protoseg.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.io.class_maps import TissueClasses


class TissueSlideDataModule(WSIPredictDataModule):
    """Tissue tiles of whole slides, read through OpenSlide, for ``protoseg predict`` of a
    tissue stage: the prototype stage clusters their patches (its gallery offers
    ``class_names``) or writes a class map per slide
    (:class:`~protoseg.callbacks.class_map_writer.SlideClassMapWriter`); a semantic head does
    the latter.

    Args:
        slides: slide files and/or folders of slides.
        class_names: the dataset's scored classes.
        class_codes: their codes; default ``0..C-1``.
        background_code: the background's code, or None.
        palette: colours of the classes, then the background.
        mpp: resolution the model works at, µm/px.
        tile_size: tile side at ``mpp``, px.
        overlap: px shared by neighbouring tiles (each tile writes its core).
        batch_size: tiles per batch.
        num_workers: DataLoader processes.
        min_tissue: tiles whose core has more tissue than this share are read.
        thumbnail_size: longer side of the tissue-mask thumbnail, px.
        default_mpp: level-0 µm/px of slides that state none.
        mean: normalisation mean on [0, 1] RGB.
        std: normalisation std.
        skip_unreadable: a slide or tile OpenSlide cannot read is left out (and listed).
    """

    def __init__(
        self,
        slides: list[str],
        class_names: list[str] = ["tumor", "stroma", "normal"],  # noqa: B006 (jsonargparse)
        class_codes: list[int] | None = None,
        background_code: int | None = 3,
        palette: list[tuple[int, int, int]] | None = None,
        mpp: float = 1.0,
        tile_size: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        num_workers: int = 2,
        min_tissue: float | None = 0.0,
        thumbnail_size: int = 1024,
        default_mpp: float | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__(
            slides,
            mpp,
            tile_size,
            overlap,
            batch_size,
            num_workers,
            min_tissue,
            thumbnail_size,
            default_mpp,
            mean,
            std,
            skip_unreadable,
        )
        self.classes = TissueClasses.from_config(class_names, class_codes, background_code, palette)

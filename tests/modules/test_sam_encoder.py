"""The frozen SAM-encoder embedder: grid, tiling, normalisation and the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from protoseg.modules import sam_encoder
from protoseg.modules.sam import PromptableSegmenter
from protoseg.modules.sam_encoder import SamEncoderEmbedder

SIDE = 32  # the tiny encoder's input, px; one embedding per 4 px


class CountingConv(nn.Conv2d):
    """A stand-in image encoder: 4 x 4 px cells, translation-equivariant, counts its tiles."""

    def __init__(self) -> None:
        super().__init__(3, 256, 4, stride=4)
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return super().forward(x)


@pytest.fixture
def tiny_sam(monkeypatch) -> PromptableSegmenter:
    torch.manual_seed(0)
    model = PromptableSegmenter(CountingConv(), nn.Identity(), nn.Identity(), SIDE, "lite_medsam")
    monkeypatch.setattr(sam_encoder, "load_sam", lambda checkpoint=None: model)
    return model


def normalised(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb.float() / 255 - mean) / std


def test_grid_is_one_embedding_per_stride(tiny_sam) -> None:
    embedder = SamEncoderEmbedder(scale=0.5)
    rgb = torch.randint(0, 256, (2, 3, 50, 90), dtype=torch.uint8)
    maps = embedder(normalised(rgb))
    assert embedder.stride == 8 and embedder.dim == 256
    assert maps.shape == (2, 256, 7, 12)  # ceil(50 / 8), ceil(90 / 8)
    assert not any(p.requires_grad for p in tiny_sam.parameters())
    assert embedder.state_dict() == {}  # the encoder's weights never go into a checkpoint


def test_tiles_with_overlap_equal_one_pass_of_a_local_encoder(tiny_sam) -> None:
    # A 4 x 4 stride-4 convolution sees each cell alone: tiles aligned on the cells, averaged
    # where they overlap, must give one pass over the whole image. (SAM's per-channel
    # standardisation, unlike LiteMedSAM's per-tile min-max, is the same for every tile.)
    tiny_sam.model_type = "vit_b"
    embedder = SamEncoderEmbedder(scale=1.0, tile_overlap=8)
    rgb = torch.randint(0, 256, (3, 64, 88), dtype=torch.uint8)
    native = embedder.embed(rgb)
    assert (
        tiny_sam.image_encoder.tiles == 1 + 3 * 4
    )  # the loading probe, then tiles at 0 16 32 down, 0 24 48 56 across
    whole = tiny_sam.image_encoder(tiny_sam.normalise(rgb[None].float()))[0]
    torch.testing.assert_close(native, whole, atol=1e-4, rtol=1e-4)


def test_small_images_are_resized_to_the_encoder_input(tiny_sam) -> None:
    embedder = SamEncoderEmbedder(scale=0.5)
    native = embedder.embed(torch.randint(0, 256, (3, 20, 40), dtype=torch.uint8))
    assert native.shape == (256, SIDE // 4, SIDE // 4)  # 10 x 20 px -> 32 x 32 px
    assert tiny_sam.image_encoder.tiles == 1 + 1  # the loading probe, one tile


def test_embeddings_are_cached_in_memory_and_on_disk(tiny_sam, tmp_path: Path) -> None:
    rgb = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    first = SamEncoderEmbedder(cache_dir=str(tmp_path / "cache"))(normalised(rgb))
    encoded = tiny_sam.image_encoder.tiles
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob(".*"))
    again = SamEncoderEmbedder(cache_dir=str(tmp_path / "cache"))
    second = again(normalised(rgb))
    assert tiny_sam.image_encoder.tiles == encoded + 1  # the loading probe only
    torch.testing.assert_close(first, second, atol=1e-2, rtol=1e-2)  # float16 on disk
    again(normalised(rgb))
    assert tiny_sam.image_encoder.tiles == encoded + 1
    # Another image or other settings: another key.
    other = rgb.clone()
    other[0, 0, 0, 0] ^= 1
    again(normalised(other))
    SamEncoderEmbedder(scale=0.25, cache_dir=str(tmp_path / "cache"))(normalised(rgb))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: f.write_bytes(f.read_bytes()[:100]), "does not read as an .npy array"),
        (lambda f: f.write_text("not an array"), "does not read as an .npy array"),
        (lambda f: np.save(f, np.zeros((256, 3, 3), np.float16)), "not float16 (256, 20, 20)"),
        (lambda f: np.save(f, np.zeros((256, 20, 20), np.float32)), "holds float32"),
        (lambda f: np.save(f, np.full((256, 20, 20), np.nan, np.float16)), "not finite"),
    ],
)
def test_a_damaged_cache_file_is_named_and_recomputed(
    tiny_sam, tmp_path: Path, capsys, damage, problem
) -> None:
    rgb = torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)
    first = SamEncoderEmbedder(scale=1.0, cache_dir=str(tmp_path)).embed(rgb)
    (file,) = tmp_path.glob("*.npy")
    damage(file)
    again = SamEncoderEmbedder(scale=1.0, cache_dir=str(tmp_path))
    encoded = tiny_sam.image_encoder.tiles
    second = again.embed(rgb)
    assert tiny_sam.image_encoder.tiles > encoded  # computed again
    torch.testing.assert_close(first, second)
    message = capsys.readouterr().err
    assert f"protoseg: warning: {file}: cached embedding" in message and problem in message
    assert message.strip().endswith("recomputing")
    # The file is whole again: a third embedder reads it without a word.
    SamEncoderEmbedder(scale=1.0, cache_dir=str(tmp_path)).embed(rgb)
    assert capsys.readouterr().err == ""
    assert np.load(file).shape == (256, 20, 20)


def test_unit_embeddings_and_settings(tiny_sam, tmp_path: Path) -> None:
    embedder = SamEncoderEmbedder(unit=True, cache_dir=str(tmp_path))
    maps = embedder(normalised(torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)))
    torch.testing.assert_close(maps.norm(dim=1), torch.ones(1, 5, 5))
    settings = embedder.settings.as_dict()
    assert settings["class_path"] == "protoseg.modules.sam_encoder.SamEncoderEmbedder"
    assert settings["init_args"]["cache_dir"] == str(tmp_path.resolve())
    assert SamEncoderEmbedder(**settings["init_args"]).settings == embedder.settings


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        SamEncoderEmbedder(scale=0)
    with pytest.raises(ValueError, match="tile_overlap"):
        SamEncoderEmbedder(tile_overlap=-1)


@pytest.mark.slow
def test_lite_medsam_encoder_embeds_a_real_image() -> None:
    embedder = SamEncoderEmbedder(scale=0.5)
    rgb = torch.randint(0, 256, (1, 3, 100, 60), dtype=torch.uint8)
    maps = embedder(normalised(rgb))
    assert maps.shape == (1, 256, 13, 8) and torch.isfinite(maps).all()
    assert embedder.cell == 4 and embedder.stride == 8
    smooth = F.avg_pool2d(maps, 2)
    assert smooth.std() > 0

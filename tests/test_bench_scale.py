"""benchmarks/scale_estimate.py's parts on a tiny MoNuSeg-layout root."""

from __future__ import annotations

from pathlib import Path

from benchmarks.scale_estimate import subset_root
from protoseg.datamodules.monuseg import find_records


def test_the_subset_root_links_the_named_images_and_their_labels(
    tiny_monuseg_root: Path, tmp_path: Path
) -> None:
    subset = subset_root(tiny_monuseg_root, ["img0", "img2"], tmp_path / "subset")
    records = find_records(subset, "png")
    assert [r.stem for r in records] == ["img0", "img2"]
    for record in records:
        assert record.image_path.is_symlink() and record.label_path is not None
        source = tiny_monuseg_root / "labels" / record.label_path.name
        assert record.label_path.read_bytes() == source.read_bytes()

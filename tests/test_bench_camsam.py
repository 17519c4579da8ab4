"""benchmarks/wsss4luad_camsam.py: the folds it scores and the README rows it writes."""

from __future__ import annotations

import json

from benchmarks.wsss4luad_camsam import FOLDS, TUNE, exclude_arg, summary_rows, tuning_exclude


def test_report_fold_leaves_out_the_tuning_fold_by_name() -> None:
    assert FOLDS["all_31"] == () and FOLDS["report_fold"] == TUNE and len(TUNE) == 10
    (arg,) = exclude_arg(("00", "09"))
    assert arg == '--data.val_exclude=["00", "09"]'  # quoted: 00 is a stem, not a number
    assert json.loads(arg.split("=", 1)[1]) == ["00", "09"]
    assert exclude_arg(()) == []


def test_summary_rows_are_the_report_fold() -> None:
    scores = {"miou": 0.5, "fwiou": 0.6, "iou_tumor": 0.4, "sam_prompts": 3.0}
    figures = {
        key: {"all_31": {"miou": 0.9}, "report_fold": scores}
        for key in (
            "cam_pseudo_masks",
            "cam_sam_pseudo_masks",
            "cam_label_free_predictions",
            "head_on_cam_sam",
        )
    }
    figures["stages"] = {
        "classifier fit": {"wall_seconds": 10.0},
        "cam label-free predictions validation [report_fold]": {"wall_seconds": 1.0},
        "cam_sam pseudo masks": {"wall_seconds": 5.0},
        "cam_sam head fit": {"wall_seconds": 2.5},
    }
    rows = summary_rows(figures)
    assert [row["scored"] for row in rows] == ["held-out"] * 4
    assert all(row["images"] == 21 and row["labels"] == "image-level" for row in rows)
    assert rows[0]["metrics"] == {"miou": 0.5, "fwiou": 0.6, "iou_tumor": 0.4}
    assert "no label at test time" in rows[2]["name"]
    assert [row["wall_seconds"] for row in rows] == [10.0, 10.0, 11.0, 17.5]


def test_tuning_fold_is_scored_by_leaving_out_the_others(tmp_path) -> None:
    folder = tmp_path / "validation" / "img"
    folder.mkdir(parents=True)
    for stem in ("00", "03", "09", "12"):
        (folder / f"{stem}.png").touch()
    assert tuning_exclude(str(tmp_path)) == ("03", "09")  # 00 and 12 are in TUNE

"""Sweep reports: summary files, the contact sheet layout and the loss-curve plot."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstjax import report
from nstjax.errors import UsageError

LAYERS = (["conv1_1"], ["conv1_1", "conv2_1"])
WEIGHTS = (1e-5, 1e-3, 0.1)
THUMB = 64


def _variants(tmp_path: Path) -> tuple[list[dict], dict, dict[str, Path]]:
    """Five variants on a 2x3 grid (one cell empty), one of them failed; a sixth off-grid."""
    rng = np.random.default_rng(0)
    rows, histories, images = [], {}, {}
    cells = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]  # (1, 2) has no variant
    for i, (r, c) in enumerate(cells):
        name = f"{i:03d}"
        failed = (r, c) == (1, 1)
        rows.append(
            {
                "name": name,
                "swept": {"style_layers": LAYERS[r], "content_weight": WEIGHTS[c]},
                "status": "failed" if failed else "done",
                "final_loss": 10.0 / (i + 1),
                "final_content_loss": 1.5,
                "final_style_loss": 2.5,
                "final_tv_loss": 0.0,
                "seconds": 1.25,
                "steps": 20,
                "group": r,
                "error": "loss non-finite" if failed else None,
            }
        )
        size = (40, 30) if i % 2 else (30, 50)  # mixed aspect ratios
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
        images[name] = path
        steps = np.arange(1, 21, dtype=float)
        histories[name] = {
            "loss": list(100.0 / steps + i),
            "content_loss": list(10.0 / steps),
            "style_loss": list(90.0 / steps + i),
            "tv_loss": [0.0] * 20,
        }
    return rows, histories, images


def test_write_reports(tmp_path):
    rows, histories, images = _variants(tmp_path)
    out_dir = tmp_path / "sweep"
    out_dir.mkdir()
    out = report.write_reports(
        out_dir,
        rows,
        histories,
        images,
        grid_rows="style_layers",
        grid_cols="content_weight",
        thumb=THUMB,
    )
    assert set(out) == {"summary_json", "summary_csv", "contact_sheet", "loss_curves"}
    assert all(p.is_file() and p.parent == out_dir for p in out.values())
    assert not list(out_dir.glob("*.tmp")) and not list(out_dir.glob(".*.tmp"))

    assert json.loads(out["summary_json"].read_text()) == rows

    with open(out["summary_csv"], newline="") as f:
        table = list(csv.DictReader(f))
        f.seek(0)
        header = next(csv.reader(f))
    assert header == [
        "name",
        "swept.style_layers",
        "swept.content_weight",
        "status",
        "final_loss",
        "final_content_loss",
        "final_style_loss",
        "final_tv_loss",
        "seconds",
        "steps",
        "group",
        "error",
    ]
    assert [r["name"] for r in table] == ["000", "001", "002", "003", "004"]
    assert table[4]["swept.style_layers"] == "conv1_1+conv2_1"
    assert table[0]["swept.content_weight"] == "1e-05"
    assert table[2]["swept.content_weight"] == "0.1"
    assert table[4]["status"] == "failed" and table[4]["error"] == "loss non-finite"
    assert table[0]["error"] == "" and table[0]["steps"] == "20"
    assert float(table[1]["final_loss"]) == rows[1]["final_loss"]


def test_contact_sheet_layout(tmp_path):
    rows, _, images = _variants(tmp_path)
    sheet, boxes = report.render_contact_sheet(
        rows, images, "style_layers", "content_weight", THUMB, "title"
    )
    assert set(boxes) == {(r, c) for r in range(2) for c in range(3)}
    assert sheet.width > 3 * THUMB and sheet.height > 2 * THUMB
    for cell in ((1, 2), (1, 1)):  # no variant; failed variant
        x0, y0, x1, y1 = boxes[cell]
        assert (x1 - x0, y1 - y0) == (THUMB, THUMB)
        assert sheet.getpixel((x0 + 2, y0 + 2)) == report.GREY
        assert sheet.getpixel((x1 - 3, y1 - 3)) == report.GREY
    x0, y0, x1, y1 = boxes[(0, 0)]  # a 30x50 image: white bars left and right
    assert sheet.getpixel((x0 + 1, (y0 + y1) // 2)) == report.WHITE
    assert sheet.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) != report.GREY
    row_x = boxes[(0, 0)][0]
    assert row_x > 10  # room for the row labels on the left
    if os.environ.get("NSTJAX_SAVE_SHEET"):
        sheet.save(os.environ["NSTJAX_SAVE_SHEET"])


def test_contact_sheet_without_grid_keys(tmp_path):
    rows, _, images = _variants(tmp_path)
    sheet, boxes = report.render_contact_sheet(rows, images, thumb=THUMB)
    assert set(boxes) == {(r, c) for r in range(2) for c in range(3)}  # 5 variants: 2 x 3
    x0, y0, _, _ = boxes[(1, 2)]  # the empty trailing cell stays white
    assert sheet.getpixel((x0 + 2, y0 + 2)) == report.WHITE
    one, boxes = report.render_contact_sheet(rows, images, grid_cols="content_weight", thumb=THUMB)
    assert {c for _, c in boxes} == {0, 1, 2}
    assert {r for r, _ in boxes} == {0, 1}  # style_layers becomes the rows


def test_bad_grid_keys(tmp_path):
    rows, histories, images = _variants(tmp_path)
    with pytest.raises(UsageError, match="not a swept setting"):
        report.write_reports(tmp_path, rows, histories, images, grid_rows="lr")
    with pytest.raises(UsageError, match="both"):
        report.write_reports(
            tmp_path, rows, histories, images, grid_rows="style_layers", grid_cols="style_layers"
        )
    with pytest.raises(UsageError, match="duplicate"):
        report.write_reports(tmp_path, rows + rows[:1], histories, images)
    assert not list(tmp_path.glob("summary.*"))


def test_loss_curves(tmp_path):
    rows, histories, _ = _variants(tmp_path)
    path = report.plot_loss_curves(tmp_path / "curves.png", rows, histories)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 150
    many = [dict(rows[0], name=f"v{i}", swept={"lr": 0.1 * (i + 1)}) for i in range(15)]
    hist = {f"v{i}": histories["000"] for i in range(15)}
    with Image.open(report.plot_loss_curves(tmp_path / "many.png", many, hist)) as img:
        assert img.width > 300
    with Image.open(report.plot_loss_curves(tmp_path / "none.png", rows, {})) as img:
        assert img.width > 300
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "value, text",
    [
        (1e-5, "1e-05"),
        (1e3, "1e+03"),
        (0.001, "1e-03"),
        (0.1, "0.1"),
        (1.0, "1"),
        (0.25, "0.25"),
        (123456.0, "1.23e+05"),
        (3, "3"),
        (True, "true"),
        (None, "none"),
        ("lbfgs", "lbfgs"),
        (["conv1_1", "conv2_1"], "conv1_1+conv2_1"),
        (["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"], "conv1_1..conv5_1 (5)"),
        (["conv1_1", "conv3_1", "conv5_1"], "conv1_1+conv3_1+conv5_1"),
        (("relu1_1", "relu2_1", "relu3_1"), "relu1_1..relu3_1 (3)"),
        ([0.5, 2], "0.5+2"),
        (float("nan"), "nan"),
    ],
)
def test_format_value(value, text):
    assert report.format_value(value) == text


def test_label():
    swept = {"style_layers": ["conv1_1", "conv2_1"], "content_weight": 1e-5}
    assert report.label(swept) == "style_layers=conv1_1+conv2_1, content_weight=1e-05"
    assert report.label(swept, ["content_weight"]) == "content_weight=1e-05"
    assert report.label({}) == ""

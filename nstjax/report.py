"""Reports for a style-transfer sweep: summary tables, a contact sheet and loss curves.

A sweep is a list of variants; each variant is one row (a dict with ``name``, ``swept``,
``status``, final losses, timings, ...), one stylized image and one loss history.
:func:`write_reports` turns them into ``summary.json``, ``summary.csv``,
``contact_sheet.png`` and ``loss_curves.png`` in the sweep's work directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from nstjax import atomic
from nstjax.errors import NstError, UsageError
from nstjax.image import open_rgb

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Box = tuple[int, int, int, int]
Histories = dict[str, dict[str, list[float]]]  # variant name -> loss name -> value per step

WHITE = (255, 255, 255)
GREY = (200, 200, 200)  # cells without an image
INK = (20, 20, 20)
DIM_INK = (80, 80, 80)
PAD, GAP = 10, 6
LOSS_PANELS = {"loss": "total loss", "style_loss": "style loss", "content_loss": "content loss"}
_LAYER = re.compile(r"^([A-Za-z]+)(\d+)_(\d+)$")


def format_value(v: Any) -> str:
    """A short, readable form of a swept value, for labels and captions.

    Powers of ten far from 1 as ``1e-05``, other floats with 3 significant digits, layer
    lists joined with ``+`` (a run like conv1_1, conv2_1, conv3_1 as ``conv1_1..conv3_1 (3)``).
    """
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != 0 and math.isfinite(v):
            exp = round(math.log10(abs(v)))
            if abs(exp) >= 3 and math.isclose(abs(v), 10.0**exp, rel_tol=1e-9):
                return f"{v:.0e}"
        return f"{v:.3g}"
    if isinstance(v, list | tuple):
        return _format_sequence(v)
    if isinstance(v, dict):
        return ",".join(f"{k}={format_value(x)}" for k, x in v.items())
    if isinstance(v, str) and ("/" in v or "\\" in v):  # a file: its name says enough
        return PurePath(v).name
    return str(v)


def _format_sequence(items: Sequence[Any]) -> str:
    """Joins with ``+``; a run of consecutive block layers (conv1_1, conv2_1, ...) is shortened."""
    matches = [_LAYER.match(x) if isinstance(x, str) else None for x in items]
    if len(items) >= 3 and all(matches):
        kinds = {(m.group(1), m.group(3)) for m in matches}
        blocks = [int(m.group(2)) for m in matches]
        if len(kinds) == 1 and blocks == list(range(blocks[0], blocks[0] + len(blocks))):
            return f"{items[0]}..{items[-1]} ({len(items)})"
    return "+".join(format_value(x) for x in items)


def label(swept: dict[str, Any], keys: Iterable[str] | None = None) -> str:
    """``key=value, key=value`` for the swept settings of a variant (all keys by default)."""
    keys = list(swept) if keys is None else list(keys)
    return ", ".join(f"{k}={format_value(swept.get(k))}" for k in keys)


def _csv_cell(v: Any) -> str:
    """A lossless-enough CSV cell: floats as ``repr`` (``1e-05``), lists joined with ``+``."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "+".join(_csv_cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text: one column per key, ``swept`` spread into ``swept.<key>`` columns."""
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            columns += [f"swept.{k}" for k in value or {}] if key == "swept" else [key]
    columns = list(dict.fromkeys(columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        swept = row.get("swept") or {}
        cells = [swept.get(c[6:]) if c.startswith("swept.") else row.get(c) for c in columns]
        writer.writerow([_csv_cell(v) for v in cells])
    return buf.getvalue()


@lru_cache(maxsize=8)
def _font(size: int) -> Font:
    """Pillow's built-in font at ``size`` px (the small bitmap font on old Pillow builds)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _line_height(font: Font) -> int:
    top, bottom = font.getbbox("Hgjy|")[1::2]
    return int(bottom - top) + 4


def _wrap(text: str, font: Font, width: int, max_lines: int = 3) -> list[str]:
    """Breaks ``text`` into lines of at most ``width`` px (after ``+``, ``,``, ``=`` or spaces)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in re.split(r"(?<=[+,= ])", para):
            if line and font.getlength(line + word) > width:
                lines.append(line.rstrip())
                line = word.lstrip()
            else:
                line += word
            while font.getlength(line) > width and len(line) > 1:  # break a long word
                fits = [i for i in range(2, len(line)) if font.getlength(line[:i]) <= width]
                cut = max(fits, default=1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def _draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[str], font: Font, box: Box, valign: float = 0, fill=INK
) -> None:
    """Draws lines centred across ``box``; ``valign`` 0 / 0.5 / 1: at its top / middle / bottom."""
    x0, y0, x1, y1 = box
    lh = _line_height(font)
    y = y0 + int((y1 - y0 - lh * len(lines)) * valign)
    for line in lines:
        draw.text((x0 + (x1 - x0 - font.getlength(line)) / 2, y), line, fill=fill, font=font)
        y += lh


def _axis(rows: list[dict], keys: list[str], named: str | None) -> tuple[list[str], list[int]]:
    """Distinct values of ``swept[keys]`` in first-appearance order: (labels, index per row).

    The ``named`` grid key is shown as its bare value; other keys as ``key=value``.
    """
    fmt = lambda k, v: format_value(v) if k == named else f"{k}={format_value(v)}"
    seen: dict[str, int] = {}
    labels: list[str] = []
    index: list[int] = []
    for row in rows:
        swept = row.get("swept") or {}
        values = [swept.get(k) for k in keys]
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = len(labels)
            labels.append("\n".join(fmt(k, v) for k, v in zip(keys, values, strict=True)))
        index.append(seen[key])
    return labels, index


def _layout(
    rows: list[dict], grid_rows: str | None, grid_cols: str | None
) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(row labels, column labels, grid position of each variant)."""
    swept_keys = list(dict.fromkeys(k for r in rows for k in (r.get("swept") or {})))
    for option, key in (("grid rows", grid_rows), ("grid columns", grid_cols)):
        if key is not None and key not in swept_keys:
            known = ", ".join(swept_keys) or "none"
            raise UsageError(f"{option}: {key!r} is not a swept setting (swept: {known})")
    if grid_rows is not None and grid_rows == grid_cols:
        raise UsageError(f"grid rows and columns are both {grid_rows!r}; pick two settings")
    if grid_rows is None and grid_cols is None:
        ncols = max(1, math.ceil(math.sqrt(len(rows))))
        return [], [], [divmod(i, ncols) for i in range(len(rows))]
    rest = [k for k in swept_keys if k not in (grid_rows, grid_cols)]
    row_keys = ([grid_rows] if grid_rows else []) + (rest if grid_cols else [])
    col_keys = [grid_cols] if grid_cols else rest
    row_labels, r_index = _axis(rows, row_keys, grid_rows)
    col_labels, c_index = _axis(rows, col_keys, grid_cols)
    return row_labels, col_labels, list(zip(r_index, c_index, strict=True))


def _thumbnail(path: Path | None, thumb: int) -> Image.Image | None:
    """The image fit into a white ``thumb`` square, or None if it is missing or unreadable."""
    if path is None:
        return None
    try:
        img = ImageOps.contain(open_rgb(path), (thumb, thumb), Image.Resampling.LANCZOS)
    except NstError:
        return None
    square = Image.new("RGB", (thumb, thumb), WHITE)
    square.paste(img, ((thumb - img.width) // 2, (thumb - img.height) // 2))
    return square


def render_contact_sheet(
    rows: list[dict],
    images: dict[str, Path],
    grid_rows: str | None = None,
    grid_cols: str | None = None,
    thumb: int = 192,
    title: str = "",
) -> tuple[Image.Image, dict[tuple[int, int], Box]]:
    """Draws the contact sheet. Returns it and the thumbnail box of every grid cell.

    Cells with no variant, a failed variant or a missing image are grey with a short note.
    """
    title_font, label_font, cap_font = _font(16), _font(14), _font(12)
    row_labels, col_labels, cells = _layout(rows, grid_rows, grid_cols)
    nrows = max(len(row_labels), 1 + max((r for r, _ in cells), default=0))
    ncols = max(len(col_labels), 1 + max((c for _, c in cells), default=0))
    named = grid_rows is not None or grid_cols is not None

    by_cell: dict[tuple[int, int], list[dict]] = {}
    for row, cell in zip(rows, cells, strict=True):
        by_cell.setdefault(cell, []).append(row)
    captions: dict[tuple[int, int], list[str]] = {}
    for cell, group in by_cell.items():
        row = group[0]
        text = str(row.get("name", "?"))
        if isinstance(row.get("final_loss"), int | float) and row.get("status") != "failed":
            text += f"  loss {format_value(float(row['final_loss']))}"
        if not named and row.get("swept"):
            text += "\n" + label(row["swept"])
        if len(group) > 1:
            text += f"\n(+{len(group) - 1} more with these values)"
        captions[cell] = _wrap(text, cap_font, thumb, max_lines=3)

    row_w = 0
    row_lines = [_wrap(t, label_font, max(thumb, 160), 5) for t in row_labels]
    if row_lines:
        row_w = int(max(label_font.getlength(s) for lines in row_lines for s in lines)) + GAP
    col_lines = [_wrap(t, label_font, thumb, 3) for t in col_labels]
    col_h = max((len(x) for x in col_lines), default=0) * _line_height(label_font)
    cap_h = max((len(x) for x in captions.values()), default=0) * _line_height(cap_font) + 4
    cell_h = thumb + cap_h
    left = PAD + row_w
    width = max(left + ncols * (thumb + GAP) - GAP + PAD, 320)
    title_lines = _wrap(title, title_font, width - 2 * PAD, 3) if title else []
    top = PAD + len(title_lines) * _line_height(title_font) + GAP + col_h + (GAP if col_h else 0)
    height = top + nrows * (cell_h + GAP) - GAP + PAD

    sheet = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(sheet)
    _draw_lines(draw, title_lines, title_font, (PAD, PAD, width - PAD, top))
    for c, lines in enumerate(col_lines):
        x = left + c * (thumb + GAP)
        _draw_lines(draw, lines, label_font, (x, PAD, x + thumb, top - GAP), 1)
    boxes: dict[tuple[int, int], Box] = {}
    for r in range(nrows):
        y = top + r * (cell_h + GAP)
        if r < len(row_lines):
            _draw_lines(draw, row_lines[r], label_font, (PAD, y, left - GAP, y + thumb), 0.5)
        for c in range(ncols):
            x = left + c * (thumb + GAP)
            box = boxes[(r, c)] = (x, y, x + thumb, y + thumb)
            group = by_cell.get((r, c))
            row = group[0] if group else {}
            failed = row.get("status") == "failed"
            img = _thumbnail(images.get(row["name"]), thumb) if group and not failed else None
            if img is not None:
                sheet.paste(img, (x, y))
            elif group or named:  # a grey cell with a note; no variant and no grid: left blank
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=GREY)
                note = ["failed"] if failed else ["missing"]
                if failed and row.get("error"):
                    note += _wrap(str(row["error"]), cap_font, thumb - 8, 4)
                font = label_font if len(note) == 1 else cap_font
                _draw_lines(draw, note, font, box, 0.5, DIM_INK)
            if group:
                cap_box = (x, y + thumb + 3, x + thumb, y + cell_h)
                _draw_lines(draw, captions[(r, c)], cap_font, cap_box)
    return sheet, boxes


def plot_loss_curves(path: Path, rows: list[dict], histories: Histories) -> Path:
    """Total, style and content loss against step (log scale), one line per variant."""
    try:
        import matplotlib  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise UsageError("loss-curve plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    by_name = {str(r.get("name")): r for r in rows}
    names = list(dict.fromkeys([*by_name, *histories]))
    hist = {n: histories.get(n) or {} for n in names}
    names = [n for n in names if any(len(v) for v in hist[n].values())]
    panels = [(k, t) for k, t in LOSS_PANELS.items() if any(hist[n].get(k) for n in names)]
    many = len(names) > 12
    cmap = plt.get_cmap("viridis" if many else "tab10" if len(names) <= 10 else "tab20")
    style = {}
    for i, name in enumerate(names):
        row = by_name.get(name, {})
        failed = row.get("status") == "failed"
        text = f"{name}: {label(row.get('swept') or {})}".rstrip(": ") + " (failed)" * failed
        color = cmap(i / max(1, len(names) - 1)) if many else cmap(i)
        text = textwrap.fill(text, 48)
        style[name] = {"color": color, "ls": "--" if failed else "-", "label": text}
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    try:
        for ax, (key, title) in zip(axes[0], panels, strict=False):
            positive = False
            for name in names:
                y = np.asarray(hist[name].get(key) or [], dtype=np.float64)
                y = np.where(np.isfinite(y), y, np.nan)
                positive |= bool(np.any(y > 0))
                if y.size:
                    ax.plot(np.arange(1, y.size + 1), y, lw=1.2, **style[name])
            if positive:
                ax.set_yscale("log")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("step")
            ax.grid(True, which="major", alpha=0.3)
        if not panels:
            axes[0][0].text(0.5, 0.5, "no loss history recorded", ha="center", va="center")
            axes[0][0].set_axis_off()
        elif many:
            note = f"{len(names)} variants; colour = sweep order (dark first); see summary.csv"
            fig.suptitle(note, fontsize=10)
        else:
            axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8, frameon=False)
        fig.tight_layout()
        save = lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        return atomic.write_with(path, save)
    finally:
        plt.close(fig)


def write_reports(
    workdir: Path,
    rows: list[dict],
    histories: dict[str, dict[str, list[float]]],
    images: dict[str, Path],
    grid_rows: str | None = None,
    grid_cols: str | None = None,
    thumb: int = 192,
) -> dict[str, Path]:
    """Writes summary.json, summary.csv, contact_sheet.png and loss_curves.png into ``workdir``.

    ``rows`` is one dict per variant (``name``, ``swept``, ``status``, final losses, ...),
    ``histories`` maps variant name to ``{"loss": [...], "style_loss": [...], ...}`` and
    ``images`` maps variant name to its stylized image. ``grid_rows`` / ``grid_cols`` name swept
    settings that lay out the contact sheet. Returns the path of every file written.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UsageError(f"report directory {str(workdir)!r} does not exist")
    if thumb < 32:
        raise UsageError(f"thumbnail size must be at least 32 px (got {thumb})")
    names = [r.get("name") if isinstance(r, dict) else None for r in rows]
    if any(not isinstance(n, str) or not n for n in names):
        raise UsageError("every sweep variant needs a non-empty string 'name'")
    if len(set(names)) < len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"duplicate variant names in the sweep: {', '.join(dupes)}")
    failed = sum(r.get("status") == "failed" for r in rows)
    title = f"{workdir.name}: {len(rows)} variants, {len(rows) - failed} done, {failed} failed"
    axes = "; ".join(f"{w}: {k}" for w, k in (("rows", grid_rows), ("columns", grid_cols)) if k)
    title += f"\n{axes}" if axes else ""
    sheet, _ = render_contact_sheet(rows, images, grid_rows, grid_cols, thumb, title)
    save_sheet = lambda f: sheet.save(f, format="PNG")
    out = {
        "summary_json": atomic.write_json(workdir / "summary.json", rows),
        "summary_csv": atomic.write_bytes(workdir / "summary.csv", summary_csv(rows).encode()),
        "contact_sheet": atomic.write_with(workdir / "contact_sheet.png", save_sheet),
    }
    out["loss_curves"] = plot_loss_curves(workdir / "loss_curves.png", rows, histories)
    return out

"""Contact sheet of a generated cohort: radiographs with detector boxes and joint scores drawn.

Reads the files back through ``ra2batch.imaging.readers`` so the sheet also shows what downstream
code will see (DICOM MONOCHROME1 inverted, 16-bit scaled).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..imaging.readers import decode

_COLOURS = {"fin_ip": (255, 80, 80), "fin_1": (255, 170, 40), "fin_2": (240, 240, 60), "fin_3": (80, 220, 90),
            "fin_4": (70, 170, 255), "wrist": (200, 110, 255)}


def _boxes(xml_path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        out.append((obj.findtext("name"), tuple(int(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
    return out


def _tile(root: Path, image: pd.Series, joints: pd.DataFrame, height: int) -> Image.Image:
    rad = decode((root / image["file"]).read_bytes(), image["file"])
    k = height / rad.height
    tile = Image.fromarray((rad.pixels * 255).astype(np.uint8)).convert("RGB")
    tile = tile.resize((max(1, int(rad.width * k)), height), Image.LANCZOS)
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=max(9, height // 45))
    for name, (x0, y0, x1, y1) in _boxes(root / "annotations" / f"{image['stem']}.xml"):
        colour = _COLOURS.get(name, (255, 255, 255))
        draw.rectangle((x0 * k, y0 * k, x1 * k, y1 * k), outline=colour, width=2)
        draw.text((x0 * k + 3, y0 * k + 2), name, fill=colour, font=font)
    # one marker per joint site: erosion/narrowing scores ("E2 J1"), green dot when both are 0
    for (x, y), group in joints.groupby(["x", "y"], sort=False):
        text = " ".join(f"{c.split('_')[2]}{s}" for c, s in zip(group["column"], group["score"]) if s > 0)
        px, py = x * k, y * k
        if text:
            draw.text((px + 5, py - 6), text, fill=(255, 255, 0), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=(255, 255, 0))
        else:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(60, 230, 60))
    draw.text((6, height - font.size - 6), f"{image['stem']} ({image['format']}, {rad.width}x{rad.height})",
              fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return tile


def contact_sheet(cohort_dir: str, out_path: str, *, max_images: int = 8, tile_height: int = 440,
                  columns: int = 4) -> str:
    """Draw the first ``max_images`` radiographs of a cohort in a grid and save it as PNG."""
    root = Path(cohort_dir)
    images = pd.read_csv(root / "images.csv").head(max_images)
    joints = pd.read_csv(root / "joints.csv")
    tiles = [_tile(root, row, joints[joints["stem"] == row["stem"]], tile_height) for _, row in images.iterrows()]
    cell_w = max(t.width for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (cell_w * min(columns, len(tiles)), tile_height * rows), (20, 20, 20))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * cell_w + (cell_w - t.width) // 2, (i // columns) * tile_height))
    sheet.save(out_path, optimize=True)
    return out_path

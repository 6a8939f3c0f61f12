"""Detector boxes as Pascal VOC XML, laid out the way labelImg writes it."""

from __future__ import annotations

from xml.sax.saxutils import escape


def voc_xml(filename: str, width: int, height: int, boxes: dict[str, tuple[float, float, float, float]]) -> str:
    """One image's annotation: integer corners, ``xmin``/``ymin`` at least 1 as labelImg clamps them."""
    objects = []
    for name, (x0, y0, x1, y1) in boxes.items():
        xmin, ymin = max(1, int(round(x0))), max(1, int(round(y0)))
        xmax, ymax = min(width - 1, int(round(x1))), min(height - 1, int(round(y1)))
        objects.append(
            "\t<object>\n"
            f"\t\t<name>{escape(name)}</name>\n"
            "\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
            "\t\t<bndbox>\n"
            f"\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
            f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n"
            "\t\t</bndbox>\n\t</object>\n"
        )
    return (
        "<annotation>\n"
        "\t<folder>images</folder>\n"
        f"\t<filename>{escape(filename)}</filename>\n"
        f"\t<path>images/{escape(filename)}</path>\n"
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>1</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n"
        + "".join(objects)
        + "</annotation>\n"
    )

"""The review site: built from a small scored output written here by the contract, opened in Chromium."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from PIL import Image

from ra2batch import catalogue
from tests.helpers import write_output
from ra2batch.catalogue import COLUMNS, ID_COLUMN, TOTAL_COLUMNS
from ra2batch.imaging.readers import decode
from ra2batch.output import open_output
from ra2batch.models.crops import cut
from ra2batch.models.plan import PLAN
from ra2batch.report import cli, layout
from ra2batch.report.overlay import HEAT_ALPHA, HEAT_CMAP, attention_overlay, upsample_nearest
from ra2batch.report.results import ResultsError, load_results
from ra2batch.report.site import CropGeometry, geometry_from_bundle, page_key

CROP = 48  # --crop-size used for the site, pixels

# (patient, limb, crop class, box, detector score) of the detections written to joints/.
DETECTIONS = [
    ("P001", "LH", "fin_2", (30.0, 20.0, 70.0, 100.0), 0.97),
    ("P001", "RH", "fin_2", (40.0, 25.0, 85.0, 110.0), 0.91),
    ("P002", "LF", "fin_ip", (10.0, 10.0, 60.0, 70.0), 0.88),
]


def _radiograph(seed: int, h: int = 140, w: int = 110) -> np.ndarray:
    """A smooth grey image with a bright bar, uint8 (something a JPEG keeps well)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 60 * np.sin(xx / (9 + seed)) ** 2 + 0.5 * yy
    img[30:110, 45 + seed * 5:60 + seed * 5] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def _attention(h: int, w: int, peak: tuple[int, int]) -> np.ndarray:
    a = np.linspace(0.05, 0.5, h * w, dtype=np.float32).reshape(h, w)
    a[peak] = 0.95
    return a


def _write_output(root: Path, *, with_uncertainty: bool = True, listed_as: str | None = None) -> Path:
    """A scoring-job output (docs/design.md contract) for two patients, images in ``root/input``.

    ``listed_as`` replaces ``root/input`` in the stored paths (e.g. where the images will be uploaded).
    """
    inputs, out = root / "input", root / "out"
    inputs.mkdir(parents=True)
    prefix = listed_as or str(inputs)
    paths = {}
    for i, (pid, limb, *_rest) in enumerate(DETECTIONS):
        Image.fromarray(_radiograph(i)).save(inputs / f"{pid}-{limb}.jpg", quality=95)
        paths[pid, limb] = f"{prefix}/{pid}-{limb}.jpg"
    paths["P002", "RF"] = f"{prefix}/P002-RF.jpg"  # listed but gone: its page must say so
    run = {"model_version": "0123456789abcdef", "scored_at": pd.Timestamp("2024-05-01", tz="UTC")}

    images = pd.DataFrame([
        {"path": p, ID_COLUMN: pid, "visit": None, "limb": limb, "status": "ok", "error": None,
         "width": 110, "height": 140, "format": "jpeg", "bits": 8, "size_bytes": 1, "content_hash": "0" * 64,
         "n_detections": 1, "chosen": True, **run} for (pid, limb), p in paths.items()])

    joints, peaks = [], iter([(0, 3), (2, 1), (3, 0), (1, 2), (5, 6), (0, 0)])
    for pid, limb, crop, box, det in DETECTIONS:
        for group in PLAN.groups_for(catalogue.limb_kind(limb), crop):
            side = 8 if limb == "LF" else 4
            att = _attention(side, side, next(peaks))
            for k, column in enumerate(group.columns(limb, crop)):
                top = catalogue.BY_COLUMN[column].max_score
                joints.append({
                    ID_COLUMN: pid, "visit": None, "limb": limb, "joint": column, "damage": group.damage,
                    "score": top * (0.2 + 0.3 * k), "crop_class": crop, "group": group.name,
                    "box_x0": box[0], "box_y0": box[1], "box_x1": box[2], "box_y1": box[3],
                    "detector_score": det, "attention": att.ravel().tolist(), "attention_h": side,
                    "attention_w": side, "path": paths[pid, limb], "uncertainty": 0.9 if k else 0.1,
                    "review": pid == "P001" and limb == "RH" and k == 1, **run})
    joints = pd.DataFrame(joints)
    if not with_uncertainty:
        joints = joints.drop(columns=["uncertainty", "review"])

    patients = []
    for pid in ("P001", "P002"):
        scores = dict.fromkeys(COLUMNS, math.nan)
        scores.update({r.column: r.score for r in joints[joints[ID_COLUMN] == pid].itertuples()})
        known = {c: (0.0 if math.isnan(v) else v) for c, v in scores.items()}
        flags = ["review:RH_mcp_E__3", "missing_limb:LF"] if pid == "P001" else ["missing_limb:LH", "partial_totals"]
        patients.append({ID_COLUMN: pid, "visit": None, **catalogue.totals(known), **scores, "n_images": 2,
                         "limbs": "LH,RH" if pid == "P001" else "LF,RF", "qc_flags": flags, **run})
    patients = pd.DataFrame(patients)[[ID_COLUMN, "visit", *TOTAL_COLUMNS, *COLUMNS, "n_images", "limbs",
                                       "qc_flags", "model_version", "scored_at"]]
    write_output(str(out), {"images": images, "joints": joints, "patients": patients})
    return out


def _report(results: Path | str, dest: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(["--results", str(results), "--dest", str(dest), *extra]))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    out = _write_output(root)
    assert _report(out, root / "site", "--crop-size", str(CROP)) == 0
    return root / "site"


class _Tags(HTMLParser):
    """Every start tag as ``(name, attrs)``."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(page: Path) -> list[tuple[str, dict[str, str]]]:
    parser = _Tags()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.tags


# --- Chromium -------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium package is not installed (apt-get install -y chromium)")


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _console(run: subprocess.CompletedProcess) -> list[str]:
    """Messages the page wrote to the JS console (uncaught errors included); the pages write none."""
    return [line for line in run.stderr.splitlines() if re.search(r"\bCONSOLE[(:]", line)]


def _screenshot(url: str, tmp: Path) -> tuple[np.ndarray, list[str]]:
    shot = tmp / "shot.png"
    run = _chromium(url, tmp / "profile", f"--screenshot={shot}", "--window-size=1280,900")
    return np.asarray(Image.open(shot).convert("L"), dtype=np.float32), _console(run)


@needs_chromium
def test_pages_render_in_chromium_without_console_errors(site, tmp_path):
    pages = [site / "index.html", *sorted((site / "patients").glob("*.html"))]
    assert len(pages) == 3
    for i, page in enumerate(pages):
        pixels, console = _screenshot(page.as_uri(), tmp_path / str(i))
        assert console == [], f"{page.name}: {console}"
        assert pixels.shape == (900, 1280)
        background = np.bincount(pixels.astype(np.uint8).ravel()).argmax()
        assert (np.abs(pixels - background) > 30).mean() > 0.005, f"{page.name} rendered blank"


@needs_chromium
def test_console_check_catches_a_script_error(site, tmp_path):
    broken = tmp_path / "index.html"
    html = site.joinpath("index.html").read_text()
    broken.write_text(html.replace("</body>", "<script>notDefined();</script></body>"))
    _, console = _screenshot(broken.as_uri(), tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)


@needs_chromium
def test_index_sorts_by_the_column_in_the_link(site, tmp_path):
    def order(sort: str) -> list[str]:
        run = _chromium(f"{(site / 'index.html').as_uri()}#sort={sort}", tmp_path / sort.replace(":", "_"),
                        "--dump-dom")
        assert _console(run) == []
        return re.findall(r'<a href="patients/[^"]+\.html">([^<]+)</a>', run.stdout)

    totals = open_output(str(site.parent / "out")).to_pandas("patients").set_index(ID_COLUMN)["Overall_Tol"]
    assert order("Overall_Tol:desc") == list(totals.sort_values(ascending=False).index)
    assert order("Overall_Tol:asc") == list(totals.sort_values().index)
    assert order("patient:desc") == ["P002", "P001"]


def test_every_file_a_page_references_exists(site):
    for page in [site / "index.html", *(site / "patients").glob("*.html")]:
        for tag, attrs in _tags(page):
            for ref in (attrs.get("src"), attrs.get("href")):
                if ref and not ref.startswith("#"):
                    assert "://" not in ref, f"{page.name} loads {ref} from the network"
                    assert (page.parent / ref).is_file(), f"{page.name} references missing {ref}"


def test_index_lists_totals_flags_uncertainty_and_highlights_review(site):
    html = (site / "index.html").read_text()
    rows = {pid: highlight for highlight, pid in re.findall(r'<tr( class="review")?><td data-value="(P00\d)"', html)}
    assert rows == {"P001": ' class="review"', "P002": ""}
    assert 'data-value="0.9"' in html  # largest flip disagreement of a patient
    assert "missing_limb" in html and "partial_totals" in html


def test_patient_page_shows_radiographs_boxes_chart_and_review(site):
    page = (site / "patients" / "P001.html").read_text()
    tags = _tags(site / "patients" / "P001.html")
    assert {a["href"] for t, a in tags if t == "image"} == {"P001/LH.jpg", "P001/RH.jpg"}
    assert sum(t == "rect" for t, _ in tags) >= 2  # one detector box per image
    charted = {a["data-column"] for t, a in tags if t == "g" and "data-column" in a}
    assert charted == set(COLUMNS)  # every joint of every limb, found or not, has its place
    assert 'class="joint review" data-column="RH_mcp_E__3"' in page
    assert "Joints flagged for review" in page and "needs review" in page
    p2 = (site / "patients" / "P002.html").read_text()
    assert "cannot read" in p2 and "P002-RF.jpg" in p2  # the vanished file is reported, not fatal


def test_attention_overlays_have_crop_size_and_stored_values(site):
    joints = open_output(str(site.parent / "out")).to_pandas("joints")
    cmap = colormaps[HEAT_CMAP]
    palette = cmap(np.linspace(0, 1, 1024))[:, :3]
    n = 0
    for page in (site / "patients").glob("*.html"):
        for tag, a in _tags(page):
            if tag != "img" or "overlay" not in a.get("class", ""):
                continue
            row = joints[(joints["limb"] == a["data-limb"]) & (joints["crop_class"] == a["data-crop-class"])
                         & (joints["group"] == a["data-group"])].iloc[0]
            stored = np.asarray(row["attention"], dtype=np.float32).reshape(row["attention_h"], row["attention_w"])
            overlay = np.asarray(Image.open(page.parent / a["src"]).convert("RGB"), dtype=np.float32) / 255
            assert overlay.shape == (CROP, CROP, 3)
            pixels = decode(Path(row["path"]).read_bytes(), row["path"]).pixels
            box = (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
            crop = cut(pixels, box, CROP, mirror=row["limb"][0] == "R")
            heat = (overlay - (1 - HEAT_ALPHA) * crop[..., None]) / HEAT_ALPHA
            shown = np.linspace(0, 1, 1024)[np.argmin(((heat[:, :, None, :] - palette) ** 2).sum(-1), axis=-1)]
            np.testing.assert_allclose(shown, upsample_nearest(stored, (CROP, CROP)), atol=0.03)
            hottest = np.unravel_index(np.argmax(shown), shown.shape)
            assert (hottest[0] * stored.shape[0] // CROP, hottest[1] * stored.shape[1] // CROP) == \
                np.unravel_index(np.argmax(stored), stored.shape)
            n += 1
    assert n == 6  # P001: LH and RH fin_2, P002: LF fin_ip; two joint groups each


def test_overlay_blocks_follow_the_stored_cells():
    att = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    up = upsample_nearest(att, (6, 6))
    assert up.shape == (6, 6) and (up[:3, 3:] == 1.0).all() and (up[3:, :3] == 0.5).all()
    rgb = attention_overlay(np.zeros((6, 6), np.float32), att)
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, 5].sum() > rgb[5, 5].sum() > rgb[0, 0].sum()


def test_outputs_without_uncertainty_still_render(tmp_path):
    out = _write_output(tmp_path, with_uncertainty=False)
    assert _report(out, tmp_path / "site", "--crop-size", "32", "--patients", "P002") == 0
    html = (tmp_path / "site" / "index.html").read_text()
    assert "P002" in html and "P001" not in html and "—" in html
    assert not (tmp_path / "site" / "patients" / "P001.html").exists()


def test_results_and_images_on_s3(tmp_path, s3_bucket):
    out = _write_output(tmp_path, listed_as=f"{s3_bucket.uri}/archive")
    s3_bucket.upload(tmp_path / "input", "archive")
    results = s3_bucket.upload(out, "scored")
    options = json.dumps(s3_bucket.options)
    assert _report(results, tmp_path / "site", "--crop-size", "32", "--storage-options", options) == 0
    page = (tmp_path / "site" / "patients" / "P001.html").read_text()
    assert page.count('class="overlay"') == 4 and "cannot read" not in page
    assert (tmp_path / "site" / "patients" / "P001" / "LH.jpg").is_file()


def test_crop_shapes_come_from_the_bundle(tiny_bundle):
    geometry = geometry_from_bundle(tiny_bundle)
    shapes = {g.name: geometry.shape(g.name) for g in PLAN.groups}  # the tiny bundle's plan variant
    assert shapes.pop("erosion_fingers") == (64, 32) and set(shapes.values()) == {(48, 48)}
    assert CropGeometry().shape("wrist_erosion") == PLAN.group("wrist_erosion").crop_shape
    smaller = geometry_from_bundle(tiny_bundle, override=32)
    assert smaller.shape("erosion_fingers") == (32, 16) and smaller.shape("wrist_erosion") == (32, 32)


def test_clear_errors_for_bad_results(tmp_path, capsys):
    with pytest.raises(ResultsError, match="holds no scoring output"):
        load_results(str(tmp_path))
    out = _write_output(tmp_path)
    assert _report(out, tmp_path / "site", "--patients", "NOPE") == 2
    assert "NOPE" in capsys.readouterr().err


def test_layout_places_every_column_inside_its_panel_once():
    for limb in catalogue.LIMBS:
        for damage in ("E", "J"):
            points = [layout.position(j.column) for j in catalogue.joints_for(limb=limb, damage=damage)]
            assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in points)
            assert len(set(points)) == len(points)
    assert layout.position("RH_mcp_E__1") == (1 - layout.position("LH_mcp_E__1")[0], layout.position("LH_mcp_E__1")[1])


def test_page_names_are_safe_readable_and_distinct():
    assert page_key("P001", "") == "P001" and page_key("P001", "2019") == "P001_2019"
    tricky = page_key("../etc/passwd", "")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", tricky) and tricky != page_key("___etc_passwd", "")

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
from PIL import Image

import ra2batch.output.writer
from ra2batch import catalogue
from ra2batch.catalogue import COLUMNS, ID_COLUMN, TOTAL_COLUMNS
from ra2batch.imaging.readers import SCORING_MAX_SIDE, decode
from ra2batch.models.crops import cut
from ra2batch.models.plan import PLAN
from ra2batch.output import open_output
from ra2batch.report import charts, cli, layout, review
from ra2batch.report.index import write_index
from ra2batch.report.overlay import (
    attention_overlay,
    geometry_from_bundle,
    geometry_from_run,
    model_crop,
    plan_geometry,
    upsample_nearest,
)
from ra2batch.report.pages import page_key, page_keys
from ra2batch.report.results import ResultsError, ScoredResults, load_results
from tests.helpers import write_output

CROP = 48  # --crop-size used for the site: crops' height on the page, CSS pixels

#: The crop geometry the fixture's run manifest records (as ``job.pipeline._crop_geometry`` writes it):
#: tall erosion crops with their own margin, square others, none of them the built-in plan's.
GEOMETRY = {g.name: {"height": 64, "width": 32, "margin": 0.15, "mirrored": "right limbs, onto the left"}
            if g.name == "erosion_fingers" else {"height": 48, "width": 48, "margin": 0.1,
                                                  "mirrored": "right limbs, onto the left"} for g in PLAN.groups}

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


def _write_with_manifest(uri: str, frames: dict[str, pd.DataFrame], crop_geometry: dict | None) -> None:
    """``helpers.write_output``, its run manifest also recording ``crop_geometry`` as the scoring job does."""
    writing = ra2batch.output.writer.writing

    def with_geometry(out, kind, info):
        extra = {"crop_geometry": json.dumps(crop_geometry), "bundle": "demo://bundle"} if crop_geometry else {}
        return writing(out, kind, {**info, **extra})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ra2batch.output.writer, "writing", with_geometry)
        write_output(uri, frames)


def _write_output(root: Path, *, with_uncertainty: bool = True, listed_as: str | None = None,
                  crop_geometry: dict | None = GEOMETRY) -> Path:
    """A scoring-job output (docs/design.md contract) for two patients, images in ``root/input``.

    ``listed_as`` replaces ``root/input`` in the stored paths (e.g. where the images will be uploaded).
    P001's second joint of each crop disagrees with its flip by 0.9 points (flagged), P002's by 0.3.
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
                    "attention_w": side, "path": paths[pid, limb],
                    "uncertainty": (0.9 if pid == "P001" else 0.3) if k else 0.1,
                    "review": pid == "P001" and limb == "RH" and k == 1, **run})
    joints = pd.DataFrame(joints)
    if not with_uncertainty:
        joints = joints.drop(columns=["uncertainty", "review"])

    patients = []
    for pid in ("P001", "P002"):
        scores = dict.fromkeys(COLUMNS, math.nan)
        scores.update({r.joint: r.score for r in joints[joints[ID_COLUMN] == pid].itertuples()})
        known = {c: (0.0 if math.isnan(v) else v) for c, v in scores.items()}
        flags = ["review:RH_mcp_E__3", "missing_limb:LF"] if pid == "P001" else ["missing_limb:LH", "partial_totals"]
        patients.append({ID_COLUMN: pid, "visit": None, **catalogue.totals(known), **scores, "n_images": 2,
                         "limbs": "LH,RH" if pid == "P001" else "LF,RF", "qc_flags": flags, **run})
    patients = pd.DataFrame(patients)[[ID_COLUMN, "visit", *TOTAL_COLUMNS, *COLUMNS, "n_images", "limbs",
                                       "qc_flags", "model_version", "scored_at"]]
    _write_with_manifest(str(out), {"images": images, "joints": joints, "patients": patients}, crop_geometry)
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


def _index_data(index: Path) -> dict:
    """The JSON rows an index page renders from."""
    m = re.search(r'<script id="index-data" type="application/json">(.*?)</script>', index.read_text(), re.DOTALL)
    return json.loads(m.group(1))


def _index_rows(index: Path) -> dict[str, dict]:
    """Index rows by patient, each as ``{column key: value, "href": link}``."""
    data = _index_data(index)
    keys = [c["key"] for c in data["columns"]] + ["href"]
    return {row[keys.index("patient")]: dict(zip(keys, row)) for row in data["rows"]}


def _visible_text(page: Path) -> str:
    """What a reader sees: the page without its tags, attributes, style and scripts."""
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", page.read_text(), flags=re.DOTALL)
    return re.sub(r"<[^>]+>", " ", html)


def test_every_file_a_page_references_exists(site):
    for page in [site / "index.html", *(site / "patients").glob("*.html")]:
        for tag, attrs in _tags(page):
            for ref in (attrs.get("src"), attrs.get("href")):
                if ref and not ref.startswith("#"):
                    assert "://" not in ref, f"{page.name} loads {ref} from the network"
                    assert (page.parent / ref).is_file(), f"{page.name} references missing {ref}"
    for row in _index_rows(site / "index.html").values():
        assert (site / row["href"]).is_file()


def test_index_ranks_by_the_review_rule_and_lists_totals_and_flags(site):
    rows = _index_rows(site / "index.html")
    assert rows["P001"]["flagged"] == 4 and rows["P002"]["flagged"] == 0  # 0.9 >= 0.75 > 0.3
    assert [rows["P001"]["rank"], rows["P002"]["rank"]] == [1, 2]
    assert rows["P001"]["max_uncertainty"] == 0.9 and rows["P002"]["min_detector"] == 0.88
    assert rows["P001"]["flags"] == "missing_limb:LF"  # the job's review: flags give way to the report's rule
    assert rows["P002"]["flags"] == "missing_limb:LH partial_totals"
    assert "visit" not in rows["P001"]  # no patient has visits: no empty column
    html = (site / "index.html").read_text()
    assert "ranked by flagged joints (most first), then their largest flip disagreement" in html
    assert "at least 0.75 points" in html


@needs_chromium
def test_index_highlights_flagged_patients_and_filters_all_of_them(site, tmp_path):
    def dom(fragment: str) -> str:
        run = _chromium(f"{(site / 'index.html').as_uri()}{fragment}", tmp_path / str(abs(hash(fragment))),
                        "--dump-dom")
        assert _console(run) == []
        return run.stdout

    assert re.findall(r'<tr( class="review")?><td[^>]*>\d+</td><td[^>]*><a href="patients/(P00\d)\.html"',
                      dom("")) == [(' class="review"', "P001"), ("", "P002")]
    assert re.findall(r'<a href="patients/[^"]+\.html">([^<]+)</a>', dom("#q=p002")) == ["P002"]
    assert re.findall(r'<a href="patients/[^"]+\.html">([^<]+)</a>', dom("#flagged=1")) == ["P001"]


def test_patient_page_shows_radiographs_boxes_chart_and_review(site):
    page = (site / "patients" / "P001.html").read_text()
    tags = _tags(site / "patients" / "P001.html")
    assert {a["href"] for t, a in tags if t == "image"} == {"P001/LH.jpg", "P001/RH.jpg"}
    assert sum(t == "rect" for t, _ in tags) >= 2  # one detector box per image
    charted = {a["data-column"] for t, a in tags if t == "g" and "data-column" in a}
    assert charted == set(COLUMNS)  # every joint of every limb, found or not, has its place
    assert 'class="joint review" data-column="RH_mcp_E__3"' in page
    assert 'class="joint review" data-column="LH_mcp_E__3"' in page  # the report's rule, not the job's column
    assert "Joints to review" in page and "needs review" in page and "Review order</th><td>1 of 2" in page
    p2 = (site / "patients" / "P002.html").read_text()
    assert "cannot read" in p2 and "P002-RF.jpg" in p2  # the vanished file is reported, not fatal
    assert "needs review" not in p2


def test_pages_name_joints_and_crops_clinically_with_grades(site):
    text = _visible_text(site / "patients" / "P001.html")
    assert "right MCP 3, erosion" in text and "left PIP 3, narrowing" in text
    assert "right middle finger" in text and "left hand" in text
    assert not re.search(r"_[EJ]__|fin_\d|fin_ip|erosion_fingers|narrowing_fingers", text)  # no internal names
    scores = re.findall(r"(\d+\.\d) → grade (\d+)", text)
    assert scores and all(int(g) == int(float(v) + 0.5) for v, g in scores)
    assert "left big toe" in _visible_text(site / "patients" / "P002.html")


def test_clinical_names_derive_from_the_catalogue():
    names = {c: catalogue.clinical_name(c) for c in COLUMNS}
    assert len(set(names.values())) == 86
    assert names["RH_mcp_E__3"] == "right MCP 3, erosion"
    assert names["LH_wrist_J__capnlun"] == "left wrist, capitate–scaphoid–lunate, narrowing"
    assert names["LH_mcp_E__ip"] == "left thumb IP, erosion" and names["RF_mtp_J__ip"] == "right big toe IP, narrowing"
    assert names["LF_mtp_E__2"] == "left MTP 2, erosion" and names["RH_pip_J__5"] == "right PIP 5, narrowing"
    with pytest.raises(KeyError, match="not an RA2 column"):
        catalogue.clinical_name("LH_mcp_E__9")


def test_scores_are_shown_beside_the_nearest_whole_grade():
    assert charts.score_text(1.3, 5) == "1.3 → grade 1"
    assert charts.score_text(1.46, 5) == "1.5 → grade 2"  # the grade of the score as shown
    assert charts.score_text(0.04, 4) == "0.0 → grade 0" and charts.grade(4.0, 4) == 4


@pytest.mark.parametrize("size", [(110, 140), (4000, 3000), (900, 7000)])
def test_box_labels_are_legible_at_the_size_drawn(size):
    width, height = size
    boxes = [charts.BoxMark(10, 10, 60, 90, "2", "left index finger"),
             charts.BoxMark(30, 12, 80, 95, "3", "left middle finger")]
    svg = charts.radiograph("x.jpg", width, height, boxes)
    shown_w, shown_h = (float(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
    assert max(shown_w, shown_h) == charts.RADIOGRAPH_SIDE and shown_w / shown_h == pytest.approx(width / height, 0.02)
    fonts = [float(f) * shown_w / width for f in re.findall(r'font-size="([\d.]+)"', svg)]
    assert len(fonts) == 2 and min(fonts) >= 11
    places = [tuple(float(v) for v in xy) for xy in re.findall(r'<text x="([\d.]+)" y="([\d.]+)"', svg)]
    assert places[0][1] != places[1][1] or abs(places[0][0] - places[1][0]) > 2 * float(fonts[0]) * width / shown_w


def test_overlay_is_the_models_crop_cut_as_the_run_manifest_says(site):
    """Every overlay on the pages is the crop ``models.crops.cut`` makes for that box, at the group's shape
    and margin in the output's run manifest, on the image decoded as the job decodes it."""
    snapshot = open_output(str(site.parent / "out"))
    manifest = json.loads(snapshot.run["crop_geometry"])
    geometry = geometry_from_run(snapshot.run)
    joints = snapshot.to_pandas("joints")
    n = 0
    for page in (site / "patients").glob("*.html"):
        for tag, a in _tags(page):
            if tag != "img" or "overlay" not in a.get("class", ""):
                continue
            row = joints[(joints["limb"] == a["data-limb"]) & (joints["crop_class"] == a["data-crop-class"])
                         & (joints["group"] == a["data-group"])].iloc[0]
            g = manifest[row["group"]]
            image = decode(Path(row["path"]).read_bytes(), row["path"], max_side=SCORING_MAX_SIDE)
            box = (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
            expected = cut(image.pixels, box, (g["height"], g["width"]), row["limb"][0] == "R", margin=g["margin"])
            np.testing.assert_array_equal(model_crop(image, box, row["limb"], geometry.groups[row["group"]]), expected)
            stored = np.asarray(row["attention"], dtype=np.float32).reshape(row["attention_h"], row["attention_w"])
            overlay = np.asarray(Image.open(page.parent / a["src"]).convert("RGB"))
            np.testing.assert_array_equal(overlay, attention_overlay(expected, stored))
            assert (int(a["height"]), int(a["width"])) == (CROP, round(CROP * g["width"] / g["height"]))  # aspect kept
            n += 1
    assert n == 6  # P001: LH and RH fin_2, P002: LF fin_ip; two joint groups each


def test_crop_boxes_of_a_downscaled_radiograph_are_scaled_as_the_job_scales_them(tmp_path):
    """A radiograph over ``SCORING_MAX_SIDE`` is decoded smaller; the joints table's box is in the file's
    pixels (the job multiplied its box by width / decoded_width) and the crop is the decoded image's."""
    yy, xx = np.mgrid[0:900, 0:4400]
    path = tmp_path / "big.png"
    Image.fromarray((40 + 100 * np.sin(xx / 37.0) ** 2 + yy / 9).astype(np.uint8)).save(path)
    image = decode(path.read_bytes(), "big.png", max_side=SCORING_MAX_SIDE)
    assert image.width < image.original_size[0]
    seen = (1234.56, 101.3, 1399.7, 720.2)  # the detector's box, decoded pixels
    stored = tuple(v * (image.original_size[0] / image.width) for v in seen)  # job.predictors.Detector._crops
    crop = geometry_from_run({"crop_geometry": json.dumps(GEOMETRY)}).groups["erosion_fingers"]
    np.testing.assert_array_equal(model_crop(image, stored, "RH", crop),
                                  cut(image.pixels, seen, (64, 32), True, margin=0.15))


def test_index_of_ten_thousand_patients_stays_small_and_reaches_everyone(tmp_path):
    n = 10_000
    rng = np.random.default_rng(7)
    ids = [f"P{i:05d}" for i in range(n)]
    patients = pd.DataFrame({ID_COLUMN: pd.array(ids, dtype="string"), "visit": pd.array([""] * n, dtype="string"),
                             **{c: rng.uniform(0, 100, n) for c in TOTAL_COLUMNS},
                             "qc_flags": [["missing_limb:LF", *[f"filled:LF_mtp_E__{t}" for t in range(1, 6)]]
                                          if i % 50 == 0 else [] for i in range(n)]})
    joints = pd.DataFrame({ID_COLUMN: pd.array(np.repeat(ids, 86), dtype="string"),
                           "visit": pd.array([""] * n * 86, dtype="string"),
                           "uncertainty": rng.exponential(0.1, n * 86), "detector_score": rng.uniform(0.6, 1, n * 86)})
    index = write_index(ScoredResults(pd.DataFrame(), joints, patients), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]
    assert index.stat().st_size < 3 * 2**20
    rows = _index_rows(index)
    assert len(rows) == n and {r["href"] for r in rows.values()} == {f"patients/{k}.html" for k in page_keys(patients)}
    assert rows["P00050"]["flags"] == "missing_limb:LF filled ×5"
    ranks = sorted(rows.values(), key=lambda r: r["rank"])
    assert [r["flagged"] for r in ranks] == sorted((r["flagged"] for r in ranks), reverse=True)
    if CHROMIUM:  # the last page and a filter reach patients no first page shows
        run = _chromium(f"{index.as_uri()}#sort=patient:asc&page=100", tmp_path / "profile", "--dump-dom")
        shown = re.findall(r'<a href="patients/[^"]+\.html">([^<]+)</a>', run.stdout)
        assert shown == ids[-100:] and _console(run) == []
        run = _chromium(f"{index.as_uri()}#q=P09999", tmp_path / "profile", "--dump-dom")
        assert re.findall(r'<a href="patients/[^"]+\.html">([^<]+)</a>', run.stdout) == ["P09999"]


def test_review_rule_ranks_flagged_joints_then_disagreement_then_detector():
    keys = {"visit": [""] * 4}
    patients = pd.DataFrame({ID_COLUMN: ["A", "B", "C", "D"], **keys})
    joints = pd.DataFrame({ID_COLUMN: ["A", "A", "B", "B", "C", "D"], "visit": [""] * 6,
                           "uncertainty": [0.8, 0.1, 0.9, 0.8, 0.5, 0.5],
                           "detector_score": [0.9, 0.9, 0.95, 0.95, 0.99, 0.7]})
    ranked = review.patient_review(patients, joints, 0.75)
    assert ranked["flagged"].tolist() == [1, 2, 0, 0]
    assert ranked["rank"].tolist() == [2, 1, 4, 3]  # B: two flagged; A: one; D before C: its lower confidence


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
    rows = _index_rows(tmp_path / "site" / "index.html")
    assert list(rows) == ["P002"] and rows["P002"]["max_uncertainty"] is None and rows["P002"]["flagged"] == 0
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
    shapes = {name: (g.height, g.width) for name, g in geometry.groups.items()}  # the tiny bundle's plan variant
    assert shapes.pop("erosion_fingers") == (64, 32) and set(shapes.values()) == {(48, 48)}
    wrist = plan_geometry().groups["wrist_erosion"]
    assert (wrist.height, wrist.width) == PLAN.group("wrist_erosion").crop_shape


def test_an_output_without_crop_geometry_falls_back_with_a_warning(tmp_path, tiny_bundle, capsys):
    out = _write_output(tmp_path, crop_geometry=None)
    assert _report(out, tmp_path / "site", "--crop-size", "32", "--patients", "P002") == 0
    err = capsys.readouterr().err
    assert "does not record how its joint crops were cut" in err and "--bundle" in err
    assert "the built-in plan" in (tmp_path / "site" / "index.html").read_text()
    assert _report(out, tmp_path / "site2", "--patients", "P002", "--bundle", tiny_bundle) == 0
    assert "does not record" not in capsys.readouterr().err
    assert f"bundle {tiny_bundle}" in (tmp_path / "site2" / "index.html").read_text()


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

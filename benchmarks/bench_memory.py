"""Memory of the largest radiographs the job accepts, in a model actor and in the report.

    .venv/bin/python benchmarks/bench_memory.py [--json PATH] [--cache DIR]

A phantom hand radiograph is enlarged to just under the pixel limit (``readers.MAX_PIXELS``) and
written in each accepted encoding: 8-bit JPEG, 8-bit, 16-bit and RGBA PNG, 16-bit and RGB
uncompressed DICOM. Each file is then measured in a fresh process:

- ``actor``: the model actor's own code (``DecodeDetectAndScore``, the demo bundle, test-time
  augmentation on): one ordinary phantom file first (the actor's working size), then the large one;
  the figure is how much the large file raised the process's peak resident memory (``VmHWM``).
- ``report``: the review site's image reader (``report.site._Radiographs``), after the same warm-up.

Target (issue 19): the largest accepted radiograph adds at most 1 GB to an actor. Memory is read
from the kernel, not timed, so the figures do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MIB = 2**20
TARGET_ADDED_MIB = 1024
ENCODINGS = ("jpeg", "png8", "png16", "png_rgba", "dicom16", "dicom_rgb")


def _phantom(folder: Path) -> Path:
    """One ordinary phantom hand radiograph (the warm-up file)."""
    from ra2batch.synth import generate_cohort

    generate_cohort(folder / "cohort", patients=1, seed=3, preview=False)
    return next((folder / "cohort" / "images").rglob("*-LH.jpg"))


def _enlarged(normal: Path) -> "Any":
    """The phantom enlarged to just under ``MAX_PIXELS``, as uint16 levels (H x W)."""
    import numpy as np
    from PIL import Image

    from ra2batch.imaging.readers import MAX_PIXELS

    img = Image.open(normal).convert("I;16")
    f = math.sqrt(0.99 * MAX_PIXELS / (img.width * img.height))
    big = img.resize((int(img.width * f), int(img.height * f)), Image.Resampling.NEAREST)
    return (np.asarray(big, dtype=np.uint16).astype(np.uint32) * 257).astype(np.uint16)


def _dicom(levels, rgb: bool) -> bytes:
    """Uncompressed DICOM of ``levels`` (uint16): 16-bit MONOCHROME2, or 8-bit RGB."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = levels.shape
    ds.PixelRepresentation = 0
    if rgb:
        eight = (levels >> 8).astype(np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = np.repeat(eight[..., None], 3, axis=2).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = levels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_files(folder: Path) -> dict[str, Path]:
    """The warm-up file and one largest accepted file per encoding (cached in ``folder``)."""
    from PIL import Image

    files = {"normal": next(folder.rglob("*-LH.jpg"), None) or _phantom(folder)}
    suffix = {"jpeg": "jpg", "png8": "png", "png16": "png", "png_rgba": "png", "dicom16": "dcm", "dicom_rgb": "dcm"}
    names = {e: folder / "large" / f"P{i}-LH.{suffix[e]}" for i, e in enumerate(ENCODINGS)}
    if not all(p.is_file() for p in names.values()):
        (folder / "large").mkdir(parents=True, exist_ok=True)
        levels = _enlarged(files["normal"])
        eight = Image.fromarray((levels >> 8).astype("uint8"))
        eight.save(names["jpeg"], "JPEG", quality=90)
        eight.save(names["png8"], "PNG", compress_level=1)
        Image.fromarray(levels).save(names["png16"], "PNG", compress_level=1)
        eight.convert("RGBA").save(names["png_rgba"], "PNG", compress_level=1)
        names["dicom16"].write_bytes(_dicom(levels, rgb=False))
        names["dicom_rgb"].write_bytes(_dicom(levels, rgb=True))
    return {**files, **names}


def _peak_mib() -> float:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` would include the parent's at fork)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _child(mode: str, normal: str, large: str) -> dict[str, Any]:
    """Run in a fresh process: the warm-up file, then ``large``; peak memory after each."""
    import torch

    torch.set_num_threads(1)
    if mode == "actor":
        import pyarrow.fs as pafs

        from ra2batch.job.inputs import list_inputs
        from ra2batch.job.pipeline import DEMO_BUNDLE
        from ra2batch.job.plan import full_plan
        from ra2batch.job.predictors import DecodeDetectAndScore, DetectAndScore
        from ra2batch.models import load_bundle

        stage = DecodeDetectAndScore(pafs.LocalFileSystem(), DetectAndScore(load_bundle(str(DEMO_BUNDLE)), tta=True))

        def run(path: str) -> dict[str, Any]:
            rows = stage(full_plan(list_inputs(path).files, 1).files).select(["record", "status", "error"]).to_pylist()
            image = next(r for r in rows if r["record"] == "image")
            return {"status": image["status"], "error": image["error"],
                    "joint_scores": sum(r["record"] == "joint" for r in rows)}
    else:
        from ra2batch.report.site import _Radiographs

        def run(path: str) -> dict[str, Any]:
            image = _Radiographs(None).get(path)
            return {"status": "error", "error": image} if isinstance(image, str) else {
                "status": "ok", "decoded": f"{image.width} x {image.height}"}
    first = run(normal)
    base = _peak_mib()
    started = time.perf_counter()
    result = run(large)
    return {"base_peak_mib": round(base, 1), "peak_mib": round(_peak_mib(), 1),
            "added_mib": round(_peak_mib() - base, 1), "seconds": round(time.perf_counter() - started, 2),
            "warm_up": first, **result}


def measure(mode: str, normal: Path, large: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, __file__, "--child", mode, str(normal), str(large)], capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"{mode} child failed on {large.name}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, help="where the test files are kept (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=HERE / "memory-results.json", help="where to write the figures")
    p.add_argument("--encodings", nargs="+", choices=ENCODINGS, default=list(ENCODINGS), help="which files to measure")
    p.add_argument("--child", nargs=3, metavar=("MODE", "NORMAL", "LARGE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    from ra2batch.imaging.readers import MAX_PIXELS, SCORING_MAX_SIDE

    with tempfile.TemporaryDirectory(prefix="ra2mem-") as scratch:
        folder = args.cache or Path(scratch)
        print("writing the largest accepted radiographs ...", flush=True)
        files = make_files(folder)
        rows = []
        for encoding in args.encodings:
            large = files[encoding]
            for mode in ("actor", "report"):
                r = measure(mode, files["normal"], large)
                r.update(encoding=encoding, mode=mode, file_mib=round(large.stat().st_size / MIB, 1))
                rows.append(r)
                print(f"{encoding:>9} {mode:>6}: file {r['file_mib']:7.1f} MiB, {r['status']}, peak "
                      f"{r['base_peak_mib']:7.1f} -> {r['peak_mib']:7.1f} MiB (+{r['added_mib']:.0f} MiB), "
                      f"{r['seconds']:.1f} s" + (f" [{r['error']}]" if r.get("error") else ""), flush=True)
    worst = max(r["added_mib"] for r in rows if r["mode"] == "actor")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "max_pixels": MAX_PIXELS, "scoring_max_side": SCORING_MAX_SIDE, "runs": rows,
              "target": {"added_mib_at_most": TARGET_ADDED_MIB, "worst_actor_added_mib": worst,
                         "met": worst <= TARGET_ADDED_MIB}}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"largest accepted radiograph ({MAX_PIXELS / 1e6:g} megapixels): adds at most {worst:.0f} MiB to a model "
          f"actor (target {TARGET_ADDED_MIB} MiB: {'met' if worst <= TARGET_ADDED_MIB else 'NOT met'}); {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

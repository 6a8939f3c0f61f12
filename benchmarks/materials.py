"""What the benchmark measures on: a cached synthetic archive and the model bundle.

The archive holds ``4N`` patients (``generate_cohort`` seeds each patient by its index, so its first
``N`` patients are exactly an ``N``-patient cohort): the ``N`` runs score the first ``N`` patients'
files, the ``4N`` run all of them. It is generated once per ``(patients, seed, scale)`` under the
cache folder and reused; a ``COMPLETE`` marker guards against a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ra2batch.catalogue import COLUMNS, LIMBS
from ra2batch.synth.render import LONG_SIDE_PX

ID_PREFIX = "SYN"


@dataclass(frozen=True)
class Archive:
    root: Path
    patients: int
    seed: int
    scale: float

    def files(self, patients: int) -> list[str]:
        """Absolute paths of the first ``patients`` patients' radiographs (4 each), sorted."""
        if patients > self.patients:
            raise ValueError(f"the archive holds {self.patients} patients, asked for {patients}")
        ids = [f"{ID_PREFIX}{i:04d}" for i in range(1, patients + 1)]
        return sorted(str(self.root / "images" / f"{pid}-{limb}.jpg") for pid in ids for limb in LIMBS)

    def describe(self) -> dict:
        lo, hi = (round(v * self.scale) for v in LONG_SIDE_PX)
        return {"root": str(self.root), "patients": self.patients, "seed": self.seed, "scale": self.scale,
                "format": "jpg", "long_side_px": [lo, hi]}


def cached_archive(cache: Path, patients: int, seed: int, scale: float) -> Archive:
    """The archive of ``patients`` patients for ``(seed, scale)``, generated on first use."""
    from ra2batch.synth import generate_cohort

    root = cache / f"cohort-p{patients}-seed{seed}-scale{scale:g}"
    done = root / "COMPLETE"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating a synthetic archive of {patients} patients at scale {scale:g} in {root} ...", flush=True)
        generate_cohort(str(root), patients, seed, formats=("jpg",), scale=scale, id_prefix=ID_PREFIX,
                        workers=min(2, os.cpu_count() or 1), preview=False)
        done.write_text(json.dumps({"patients": patients, "seed": seed, "scale": scale}))
    archive = Archive(root, patients, seed, scale)
    missing = [f for f in archive.files(patients) if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"cached archive {root} lacks {missing[0]}; delete the folder to regenerate it")
    return archive


def untrained_bundle(cache: Path, preset: str) -> Path:
    """An untrained bundle of ``preset``'s architecture (``demo`` or ``paper``), saved once in the cache.

    Speed does not depend on training, but an untrained detector scores every box below the usual
    threshold and would find nothing; ``min_score`` 0 makes it report a box for every class, so
    every joint model runs on every joint, as with a trained bundle on a complete radiograph.
    """
    import torch

    from ra2batch.models import build_bundle
    from ra2batch.training.presets import get_preset

    p = get_preset(preset)
    # keyed by the architecture, so a changed preset never reuses a stale cached bundle
    arch = json.dumps([p.plan.model_dump(mode="json"), {k: c.model_dump(mode="json") for k, c in p.detectors.items()},
                       p.joint_head.model_dump(mode="json")], sort_keys=True)
    root = cache / f"bundle-{preset}-untrained-{hashlib.sha256(arch.encode()).hexdigest()[:8]}"
    if (root / "bundle.json").is_file():
        return root
    print(f"building an untrained {preset} bundle in {root} ...", flush=True)
    torch.manual_seed(0)
    detectors = {k: c.model_copy(update={"min_score": 0.0}) for k, c in p.detectors.items()}
    bundle = build_bundle(p.plan, detectors, joint_head=p.joint_head)
    bundle.save(str(root), label_medians={c: 0.0 for c in COLUMNS},
                provenance={"notes": f"untrained {preset} architecture for benchmarks (min_score 0)"})
    return root


def choose_bundle(models: str | None, preset: str, cache: Path) -> tuple[str, str]:
    """``(bundle path or URI, description)``: ``models`` if given, else the built-in demo bundle for the
    ``demo`` preset when it is installed, else an untrained bundle of ``preset``."""
    from ra2batch.job.pipeline import DEMO_BUNDLE

    if models:
        return models, f"{models} (given with --models)"
    if preset == "demo" and (DEMO_BUNDLE / "bundle.json").is_file():
        return str(DEMO_BUNDLE), "built-in demo bundle (ra2batch/demo_bundle, trained)"
    return str(untrained_bundle(cache, preset)), f"untrained {preset}-preset bundle (weights random, min_score 0)"

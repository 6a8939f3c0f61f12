"""Benchmark the job's reduce and write path at archive scale, and a nightly merge into a large store.

    .venv/bin/python benchmarks/bench_reduce.py --radiographs 20000 320000 --json PATH [--results-md]

The demo archive is scored once with the real job; its image and joint rows are then replayed under
fresh Patient_IDs and paths to N radiographs, generated on the cluster's workers, and go through the
job's own reduce stage, table commits, predictions.csv and manifest (``job.pipeline.write_run``):
the model stage is the only part replaced. Then a real archive of the largest N files (hard links to
the demo archive's files under the replayed names) gets three new radiographs of new patients, and
``nightly_rescore`` lists it, plans, scores the three with the real models and merges them into the
largest store. Each run is a fresh process whose process tree is sampled for memory; see README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from monitors import TreeMemorySampler  # noqa: E402

GIB = 2**30
#: Radiographs per generated block of the replayed stream.
BLOCK_RADIOGRAPHS = 1000
TARGETS = {"driver_peak_16n_over_n": 1.1, "driver_peak_gib": 1.5, "throughput_16n_over_n": 0.8,
           "nightly_files_rewritten_fraction": 0.02, "nightly_over_16n_wall": 0.15}


# -- the template: the demo archive scored once by the real job ----------------------------------


def _template(cache: Path) -> dict[str, Any]:
    """Score the demo archive (cached) and keep its image and joint rows as the replay template."""
    from ra2batch.job.cli import DEMO_COHORT
    from ra2batch.job.pipeline import DEMO_BUNDLE, score_archive
    from ra2batch.output import open_output
    from ra2batch.synth import generate_cohort

    done = cache / "template.json"
    if done.is_file():
        return json.loads(done.read_text())
    archive = cache / "demo-archive"
    if not (archive / "truth.csv").is_file():
        generate_cohort(archive, **DEMO_COHORT, preview=False)
    summary = score_archive(str(archive / "images"), str(cache / "demo-output"))
    snapshot = open_output(str(cache / "demo-output"))
    for name in ("images", "joints"):
        snapshot.to_pandas(name).to_parquet(cache / f"template-{name}.parquet")
    info = {"model_version": summary.model_version, "bundle": str(DEMO_BUNDLE), "radiographs": summary.files,
            "patients": summary.patients, "joints": summary.joints}
    done.write_text(json.dumps(info))
    return info


# -- the replayed stream --------------------------------------------------------------------------


def _new_ids(replica: int, pids: list[str]) -> list[str]:
    return [f"R{replica:07d}{pid}" for pid in pids]


def replay_path(root: str, replica: int, new_pid: str, limb: str, suffix: str) -> str:
    """Where a replayed radiograph lives: the same path in the stream and in the hard-link archive."""
    return f"{root}/{replica // 1000:04d}/{new_pid}-{limb}{suffix}"


def replay_block(batch: dict[str, Any], images, joints, root: str, buckets: int):
    """``REDUCE`` rows of the replicas in ``batch["id"]``: the template's rows with each patient renamed."""
    import numpy as np
    import pyarrow as pa

    from ra2batch.job.tables import REDUCE
    from ra2batch.output.buckets import BUCKET, bucket_of

    pids = sorted(set(images["Patient_ID"].to_pylist()))
    suffix = {p: Path(p).suffix for p in images["path"].to_pylist()}
    parts = []
    for record, rows in (("image", images), ("joint", joints)):
        n = rows.num_rows
        old_pid, limbs, old_path = rows["Patient_ID"].to_pylist(), rows["limb"].to_pylist(), rows["path"].to_pylist()
        for replica in batch["id"].tolist():
            renamed = dict(zip(pids, _new_ids(replica, pids)))
            new_pid = [renamed[p] for p in old_pid]
            paths = [replay_path(root, replica, p, limb, suffix[q]) for p, limb, q in zip(new_pid, limbs, old_path)]
            bucket = dict(zip(renamed.values(), bucket_of(renamed.values(), renamed.values(), buckets)))
            columns = {"record": pa.array([record] * n, pa.string()), "Patient_ID": pa.array(new_pid, pa.string()),
                       "path": pa.array(paths, pa.string()),
                       BUCKET: pa.array(np.array([bucket[p] for p in new_pid], np.int64))}
            parts.append(pa.table({f.name: columns[f.name] if f.name in columns else
                                   rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(n, f.type)
                                   for f in REDUCE}, schema=REDUCE))
    return pa.concat_tables(parts)


# -- child runs -----------------------------------------------------------------------------------


def _start_ray(spec: dict[str, Any]) -> None:
    """A local cluster as a standing one is: up, with Ray Data's session actors, which its first
    dataset creates and it keeps (as bench_scoring.py's start-up does), so no run pays for them."""
    import ray

    ray.init(num_cpus=spec["cpus"], include_dashboard=False, _temp_dir=spec["ray_tmp"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(1).map_batches(lambda batch: batch).take_all()


def _child_replay(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd
    import pyarrow.parquet as pq
    import ray

    from ra2batch.job.plan import RunPlan
    from ra2batch.job.pipeline import load_models, write_run
    from ra2batch.job.tables import REDUCE
    from ra2batch.output.buckets import bucket_count
    from ra2batch.output.writer import repair, writing
    from ra2batch.storage import resolve

    n = spec["radiographs"]
    cache = Path(spec["cache"])
    images, joints = (pq.read_table(cache / f"template-{t}.parquet") for t in ("images", "joints"))
    per_replica = images.num_rows
    replicas = -(-n // per_replica)
    buckets = bucket_count(replicas * per_replica)
    bundle, uri, _ = load_models(spec["bundle"], None)
    _start_ray(spec)
    start = time.time()
    stream = ray.data.range(replicas, override_num_blocks=max(1, -(-replicas * per_replica // BLOCK_RADIOGRAPHS)))
    stream = stream.map_batches(replay_block, batch_format="numpy", batch_size=None, fn_kwargs={
        "images": images, "joints": joints, "root": spec["archive_root"], "buckets": buckets})
    out = resolve(spec["store"])
    with writing(out, "score", {"input": spec["archive_root"], "bundle": uri, "model_version": bundle.model_version,
                                "full": True}) as run:
        plan = RunPlan(pd.DataFrame(), REDUCE.empty_table(), buckets, overwrite=True, listed=replicas * per_replica)
        row, totals = write_run(run, plan, stream, bundle.model_version, bundle.label_medians, repair(run))
    end = time.time()
    ray.shutdown()
    return {"phase": [start, end], "wall_s": end - start, "radiographs": totals["scored"],
            "patients": totals["patients"], "joints": totals["joints"], "buckets": buckets,
            "data_files": _data_files(spec["store"]), "driver_peak_rss_bytes": _max_rss(),
            "output_version": row["version"]}


def _child_nightly(spec: dict[str, Any]) -> dict[str, Any]:
    import ray

    from ra2batch.nightly import nightly_rescore

    _start_ray(spec)
    before = _file_sets(spec["store"])
    start = time.time()
    summary = nightly_rescore(spec["archive_root"], spec["store"], models=spec["bundle"])
    end = time.time()
    ray.shutdown()
    after = _file_sets(spec["store"])
    changed = sum(len(after[t] ^ before.get(t, set())) for t in after)
    total = sum(len(files) for files in after.values())
    return {"phase": [start, end], "wall_s": end - start, "listed": summary.listed, "scored": summary.scored,
            "patients_rebuilt": summary.patients, "files_changed": changed, "data_files": total,
            "files_rewritten_fraction": changed / total, "by_table": {t: len(after[t] ^ before.get(t, set()))
                                                                       for t in after},
            "driver_peak_rss_bytes": _max_rss()}


def _file_sets(store: str) -> dict[str, set[str]]:
    """The data files of every table (``runs`` included) in the output's published version."""
    from ra2batch.output import TABLES, open_output
    from ra2batch.output.delta import data_files, open_table

    snapshot = open_output(store)
    files = {name: {p for fs in data_files(snapshot.table(name)).values() for p, _ in fs} for name in TABLES}
    runs = open_table(snapshot.out, "runs")
    files["runs"] = set(runs.file_uris())
    return files


def _data_files(store: str) -> int:
    return sum(len(f) for f in _file_sets(store).values())


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_child(kind: str, spec: dict[str, Any], interval: float) -> dict[str, Any]:
    """Run one child in a fresh process, sampling its process tree's memory (PSS) during its phase."""
    with tempfile.TemporaryDirectory(prefix="ra2reduce-", dir="/tmp") as scratch:
        spec = {**spec, "ray_tmp": f"{scratch}/ray"}
        result_file = Path(scratch) / "result.json"
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, json.dumps(spec), str(result_file)])
        sampler = TreeMemorySampler(proc.pid, interval).start()
        code = proc.wait()
        sampler.stop()
        if code != 0:
            raise SystemExit(f"bench_reduce: the {kind} run failed (exit {code})")
        result = json.loads(result_file.read_text())
    peak = sampler.peak(*result["phase"])
    return {**result, "cluster_peak_bytes": peak.bytes, "cluster_peak_processes": peak.processes,
            "memory_measure": sampler.measure}


# -- the archive of hard links for the nightly run -----------------------------------------------


def _link_archive(cache: Path, root: Path, radiographs: int) -> None:
    """Hard links named as the replayed radiographs of the first ``radiographs`` to the demo archive's files."""
    import pyarrow.parquet as pq

    marker = root / f".complete-{radiographs}"
    if marker.is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    images = pq.read_table(cache / "template-images.parquet").to_pylist()
    pids = sorted({r["Patient_ID"] for r in images})
    for replica in range(-(-radiographs // len(images))):
        renamed = dict(zip(pids, _new_ids(replica, pids)))
        for r in images:
            target = Path(replay_path(str(root), replica, renamed[r["Patient_ID"]], r["limb"], Path(r["path"]).suffix))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(r["path"], target)
    marker.write_text("")


def _add_new_patients(cache: Path, root: Path, n: int = 3) -> None:
    """``n`` new radiographs, one of each of ``n`` new patients (hard links, so real demo images)."""
    import pyarrow.parquet as pq

    images = pq.read_table(cache / "template-images.parquet").to_pylist()[:n]
    new = root / "arrived"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    for i, r in enumerate(images):
        os.link(r["path"], new / f"NEW{i:03d}-{r['limb']}{Path(r['path']).suffix}")


# -- the parent -----------------------------------------------------------------------------------


def _ratios(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sizes = sorted(result["runs"], key=int)
    small, large = result["runs"][sizes[0]], result["runs"][sizes[-1]]
    values = {
        "driver_peak_16n_over_n": large["driver_peak_rss_gib"] / small["driver_peak_rss_gib"],
        "driver_peak_gib": large["driver_peak_rss_gib"],
        "throughput_16n_over_n": large["radiographs_per_s"] / small["radiographs_per_s"],
        "nightly_files_rewritten_fraction": result["nightly"]["files_rewritten_fraction"],
        "nightly_over_16n_wall": result["nightly"]["wall_s"] / large["wall_s"],
    }
    at_least = {"throughput_16n_over_n"}
    return {k: {"value": v, "target": (">= " if k in at_least else "<= ") + f"{TARGETS[k]:g}",
                "met": v >= TARGETS[k] if k in at_least else v <= TARGETS[k]} for k, v in values.items()}


def _markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Reduce and write benchmark: results", "",
             f"Command: `{result['command']}` ({result['started']}); see README.md, \"Archive-scale benchmark\".", "",
             "## Machine", "",
             f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Ray {m['ray']}, Python {m['python']}; "
             f"load average {m['load_average_1m_at_start']} at the start; {result['cpus']} CPUs for Ray.", "",
             "## Runs", "",
             "| radiographs | patients | buckets | wall s | radiographs/s | driver peak RSS GiB | "
             "cluster peak GiB (PSS, processes) | data files |", "|---|---|---|---|---|---|---|---|"]
    for n, r in sorted(result["runs"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | {r['patients']} | {r['buckets']} | {r['wall_s']:.1f} | {r['radiographs_per_s']:.0f} | "
                     f"{r['driver_peak_rss_gib']:.3f} | {r['cluster_peak_gib']:.2f} ({r['cluster_peak_processes']}) "
                     f"| {r['data_files']} |")
    nightly = result["nightly"]
    lines += ["", "## Nightly merge", "",
              f"{nightly['store_radiographs']} radiographs in the store, {nightly['listed']} listed, {nightly['scored']} "
              f"new scored by the demo bundle's models, {nightly['patients_rebuilt']} patient(s) rebuilt: "
              f"{nightly['wall_s']:.1f} s; {nightly['files_changed']} of {nightly['data_files']} data files added or "
              f"removed ({nightly['files_rewritten_fraction']:.2%}; by table: "
              + ", ".join(f"{t} {c}" for t, c in nightly["by_table"].items()) + ").", "",
              "## Targets", "", "| figure | value | target | met |", "|---|---|---|---|"]
    for k, t in result["targets"].items():
        lines.append(f"| {k} | {t['value']:.3f} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--radiographs", type=int, nargs="+", default=[20000, 320000], metavar="N",
                   help="replayed archive sizes (the largest also gets the nightly run)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of each run's local Ray cluster")
    p.add_argument("--cache", type=Path, default=HERE / ".cache" / "reduce",
                   help="template, stores and the hard-link archive (stores are rewritten each time)")
    p.add_argument("--json", type=Path, default=HERE / "reduce-results.json", help="where to write the figures")
    p.add_argument("--results-md", nargs="?", type=Path, const=HERE / "REDUCE-RESULTS.md", default=None,
                   help="also write this markdown report (default path: benchmarks/REDUCE-RESULTS.md)")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, spec, result_file = args.child
        run = {"replay": _child_replay, "nightly": _child_nightly}[kind]
        Path(result_file).write_text(json.dumps(run(json.loads(spec))))
        return 0

    from report import machine

    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "cpus": args.cpus, "command": "python benchmarks/bench_reduce.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print("scoring the demo archive for the replay template ...", flush=True)
    template = _template(cache)
    archive = cache / "archive"
    sizes = sorted(set(args.radiographs))
    runs = {}
    for n in sizes:
        store = cache / f"store-{n}"
        shutil.rmtree(store, ignore_errors=True)
        print(f"replaying {n} radiographs through the reduce and write path ...", flush=True)
        r = _run_child("replay", {"radiographs": n, "cache": str(cache), "bundle": template["bundle"],
                                  "archive_root": str(archive), "store": str(store), "cpus": args.cpus},
                       args.sample_interval)
        runs[str(n)] = {**r, "driver_peak_rss_gib": r["driver_peak_rss_bytes"] / GIB,
                        "cluster_peak_gib": r["cluster_peak_bytes"] / GIB,
                        "radiographs_per_s": r["radiographs"] / r["wall_s"]}
        print(f"  {r['wall_s']:.1f} s, {runs[str(n)]['radiographs_per_s']:.0f} radiographs/s, driver peak "
              f"{runs[str(n)]['driver_peak_rss_gib']:.3f} GiB, cluster peak {runs[str(n)]['cluster_peak_gib']:.2f} GiB, "
              f"{r['data_files']} data files", flush=True)
    largest = sizes[-1]
    print(f"linking an archive of {largest} radiographs and adding 3 new ones ...", flush=True)
    _link_archive(cache, archive, runs[str(largest)]["radiographs"])
    _add_new_patients(cache, archive)
    print("nightly run on the largest store ...", flush=True)
    nightly = _run_child("nightly", {"cache": str(cache), "bundle": template["bundle"], "archive_root": str(archive),
                                     "store": str(cache / f"store-{largest}"), "cpus": args.cpus},
                         args.sample_interval)
    nightly["store_radiographs"] = runs[str(largest)]["radiographs"]
    shutil.rmtree(archive / "arrived", ignore_errors=True)
    print(f"  {nightly['wall_s']:.1f} s; {nightly['files_changed']} of {nightly['data_files']} data files added or "
          f"removed ({nightly['files_rewritten_fraction']:.2%})", flush=True)
    result = {**info, "template": template, "runs": runs, "nightly": nightly}
    result["targets"] = _ratios(result)
    for k, t in result["targets"].items():
        print(f"{k}: {t['value']:.3f} (target {t['target']}, {'met' if t['met'] else 'NOT met'})")
    args.json.write_text(json.dumps(result, indent=2))
    if args.results_md:
        args.results_md.write_text(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

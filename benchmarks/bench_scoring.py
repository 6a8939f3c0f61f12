"""Benchmark the scoring job against a naive serial loop and the ideal serial cost; see benchmarks/README.md.

    .venv/bin/python benchmarks/bench_scoring.py --patients 50 --results-md

Runs, each in a fresh process whose whole process tree is sampled for memory (and the GPUs, if any):
naive and bound on ``N`` patients, the Ray Data job on ``N`` and on ``4N`` patients, once on a
cluster with a warm model pool (started with the cluster, as on a standing cluster) and once with the
job's own model actors (a cluster without a pool: the job pays their start-up). Prints a table,
writes the figures as JSON (``--json``) and, with ``--results-md``, benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ra2batch.job.config import JobConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from materials import cached_archive, choose_bundle  # noqa: E402
from monitors import GpuSampler, TreeMemorySampler  # noqa: E402
from report import format_console, machine, results_markdown  # noqa: E402
from workloads import Spec  # noqa: E402

#: JobConfig fields that have a command-line flag here (``--detector-batch-size`` etc.).
NUMERIC_KNOBS = ("files_per_decode_task", "detector_actors", "detector_batch_size", "detector_gpus", "scorer_actors",
                 "scorer_batch_size", "scorer_gpus", "actor_cpus", "torch_threads")
JOB_KNOBS = (*NUMERIC_KNOBS, "tta", "fuse_models", "decode_in_actors")
GPU_TARGET = 250.0  # radiographs per second per H100, paper preset
#: --model-pool value -> the job variants run: (name, JobConfig.model_pool)
VARIANTS = {"warm": ("warm", "warm"), "job": ("cold", "job")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=50, help="N: patients (4 radiographs each) of the main runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    p.add_argument("--scale", type=float, default=0.5,
                   help="synthetic image scale (long side 1000-2500 px at 1; default 0.5: 500-1250 px)")
    p.add_argument("--models", help="model bundle (dir or s3://); default: the built-in demo bundle if installed, "
                                    "else an untrained bundle of --preset")
    p.add_argument("--preset", choices=("demo", "paper"), default="demo",
                   help="architecture of the untrained bundle used without --models (paper: ResNet-50 RetinaNet "
                        "1000/1400, EfficientNet B3/B4/B5; for GPUs)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where archives and bundles are cached")
    p.add_argument("--json", type=Path, default=HERE / "results.json", help="where to write the figures as JSON")
    p.add_argument("--results-md", nargs="?", type=Path, const=HERE / "RESULTS.md", default=None,
                   help="also (re)write this markdown report (default path: benchmarks/RESULTS.md)")
    p.add_argument("--cpus", type=int, default=cpus, help="CPUs of the job's local Ray cluster")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the naive and bound runs (1: serial; see README)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the naive and bound runs (the job places its models by JobConfig)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each kind; each figure is from the run of median wall time (this 2-core machine's "
                   "speed drifts by 10 %% from minute to minute)")
    p.add_argument("--sample-interval", type=float, default=0.2, help="seconds between memory/GPU samples")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record each run with py-spy (all its processes) into DIR/RUN.svg; slows the runs, so "
                        "their figures are only good for finding where the time goes")
    for knob in NUMERIC_KNOBS:
        kind = float if knob.endswith(("gpus", "cpus")) else int
        p.add_argument(f"--{knob.replace('_', '-')}", type=kind, help=f"JobConfig.{knob}")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="JobConfig.tta: score every crop and its mirror (all runs follow it; default: the job's)")
    p.add_argument("--model-pool", choices=("both", "warm", "job"), default="both",
                   help="job runs: on a warm model pool started with the cluster (warm), with the job's own model "
                   "actors (job), or both (default)")
    p.add_argument("--fuse-models", action=argparse.BooleanOptionalAction, default=None,
                   help="JobConfig.fuse_models: one actor pool detects and scores (default: the job's, on without GPUs)")
    p.add_argument("--decode-in-actors", action=argparse.BooleanOptionalAction, default=None,
                   help="JobConfig.decode_in_actors: the fused actors (and a CPU pool's) read and decode their own "
                   "files (default: the job's, on without GPUs)")
    args = p.parse_args(argv)
    if args.patients < 1:
        p.error("--patients must be at least 1")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def _child_env(scratch: Path) -> dict[str, str]:
    """The caller's environment with Ray's token authentication in a private token file (nothing in
    ``~/.ray`` is read or written) and no ``RAY_ADDRESS``, so the job starts its own local cluster."""
    token = scratch / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    return env


def _profiler(out: Path) -> list[str]:
    """py-spy sampling the child and every process it starts (Ray's workers too), as a flame graph."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).is_file():
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    return [exe, "record", "--subprocesses", "--nonblocking", "--rate", "50", "--output", str(out), "--"]


def measure(spec: Spec, name: str, scratch: Path, interval: float, profile: Path | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh process; its figures plus peak memory and GPU use over its measured phase."""
    spec_file, result_file, log = (scratch / f"{name}.{ext}" for ext in ("spec", "json", "log"))
    spec_file.write_text(json.dumps(asdict(spec)))
    command = [sys.executable, str(HERE / "workloads.py"), str(spec_file), str(result_file)]
    if profile:
        command = _profiler(profile / f"{name}.svg") + command
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_child_env(scratch))
        memory = TreeMemorySampler(child.pid, interval).start()
        gpu = GpuSampler(interval).start()
        code = child.wait()
        memory.stop()
        gpu.stop()
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"the {spec.kind} run failed (exit {code}); end of its log {log}:\n{tail}")
    run = json.loads(result_file.read_text())
    start, end = run.pop("phase")
    peak = memory.peak(start, end)
    run.update(radiographs_per_second=run["radiographs"] / run["wall_s"] if run["wall_s"] > 0 else 0.0,
               peak_memory_bytes=peak.bytes, peak_memory_processes=peak.processes,
               peak_memory_by_process=dict(sorted(peak.by_process.items(), key=lambda kv: -kv[1])),
               memory_measure=memory.measure,
               gpu_utilisation=gpu.summary(start, end))
    return run


def median_run(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (the lower middle one of an even number), with every try's wall
    time, rate and peak memory under ``repeats``."""
    chosen = sorted(tries, key=lambda r: r["wall_s"])[(len(tries) - 1) // 2]
    return {**chosen, "repeats": [{k: r[k] for k in ("wall_s", "radiographs_per_second", "peak_memory_bytes")}
                                  for r in tries]}


def _warm_page_cache(files: list[str]) -> None:
    """Read every file once so that no run pays for the first read from disk."""
    for f in files:
        Path(f).read_bytes()


def targets(runs: dict[str, dict[str, Any]], variant: str) -> dict[str, dict[str, Any]]:
    """The issue's ratios with their targets (set for a 2-core CPU, the demo bundle and N = 50) for
    the job runs of ``variant`` (``warm`` or ``cold``)."""
    job, job4, naive, bound = runs[f"job_{variant}"], runs[f"job_{variant}_4n"], runs["naive"], runs["bound"]
    speedup = job["radiographs_per_second"] / naive["radiographs_per_second"]
    over_bound = job["wall_s"] / bound["wall_s"]
    memory = job4["peak_memory_bytes"] / job["peak_memory_bytes"]
    throughput = job4["radiographs_per_second"] / job["radiographs_per_second"]
    return {
        "job speed-up over naive": {"value": speedup, "target": ">= 1.3", "met": speedup >= 1.3},
        "job wall / serial bound": {"value": over_bound, "target": "<= 1.1", "met": over_bound <= 1.1},
        "peak memory 4N / N": {"value": memory, "target": "<= 1.15", "met": memory <= 1.15},
        "radiographs/s 4N / N": {"value": throughput, "target": "0.9 - 1.1", "met": 0.9 <= throughput <= 1.1},
    }


def steady_throughput(run: dict[str, Any]) -> float | None:
    """Radiographs per second once the model actors are up (their models loaded): the job's rate
    without its fixed start-up, which says whether the cost per radiograph grows with the archive."""
    up = run.get("models_up_s")
    return run["radiographs"] / (run["wall_s"] - up) if up is not None and run["wall_s"] > up else None


def _gpu_target(job: dict[str, Any] | None) -> dict[str, Any] | None:
    if not job or not job["gpus"]:
        return None
    per_gpu = job["radiographs_per_second"] / job["gpus"]
    return {"value": per_gpu, "target": f">= {GPU_TARGET:g} radiographs/s per H100 (paper preset)",
            "met": per_gpu >= GPU_TARGET}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    started = machine()
    n = args.patients
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    archive = cached_archive(args.cache, 4 * n, args.seed, args.scale)
    models, description = choose_bundle(args.models, args.preset, args.cache)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    knobs = {k: getattr(args, k) for k in JOB_KNOBS if getattr(args, k) is not None}
    job_config = JobConfig(**knobs)
    common = dict(input=str(archive.root / "images"), models=models, threads=args.threads, cpus=args.cpus,
                  device=device, job_config=knobs, detector_batch_size=job_config.detector_batch_size,
                  scorer_batch_size=job_config.scorer_batch_size, tta=job_config.tta)
    files, files_4n = archive.files(n), archive.files(4 * n)
    _warm_page_cache(files_4n)
    variants = [VARIANTS[v] for v in (("warm", "job") if args.model_pool == "both" else (args.model_pool,))]
    plan = {"naive": ("naive", files, n, {}), "bound": ("bound", files, n, {})}
    for name, pool in variants:
        plan[f"job_{name}"] = ("job", files, n, {"model_pool": pool})
        plan[f"job_{name}_4n"] = ("job", files_4n, 4 * n, {"model_pool": pool})
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ra2bench-") as scratch:
        for key, (kind, these, patients, pool) in plan.items():
            print(f"{key}: {len(these)} radiographs ...", flush=True)
            spec = Spec(kind=kind, files=these, **{**common, "job_config": {**knobs, **pool}})
            tries = [measure(spec, f"{key}-{i}", Path(scratch), args.sample_interval, args.profile)
                     for i in range(args.repeats)]
            runs[key] = {"patients": patients, **median_run(tries)}
    checked = {name: targets(runs, name) for name, _ in variants}
    job = runs[f"job_{variants[0][0]}"]
    if len({runs[k]["joints"] for k in ("naive", "bound", *(f"job_{v}" for v, _ in variants))}) > 1:
        print("warning: the runs scored different numbers of joints ("
              + ", ".join(f"{k} {r['joints']}" for k, r in runs.items() if not k.endswith("_4n"))
              + "): they did not do the same work", file=sys.stderr)
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": started,
        "bundle": {"path": models, "description": description, "model_version": job["model_version"],
                   "device_naive_bound": device},
        "archive": archive.describe(),
        "patients": n,
        "job_config": job["config"],
        "memory_measure": job["memory_measure"],
        "sample_interval_s": args.sample_interval,
        "repeats": args.repeats,
        "profiled": bool(args.profile),
        "runs": runs,
        "variants": [name for name, _ in variants],
        "ratios": {name: {k: v["value"] for k, v in t.items()} for name, t in checked.items()},
        "targets": checked,
        "gpu_utilisation": {k: r["gpu_utilisation"] for k, r in runs.items() if k.startswith("job")},
        "gpu_target": {name: _gpu_target(runs[f"job_{name}"]) for name, _ in variants},
        "startup_s": {k: r["startup_s"] for k, r in runs.items() if k.startswith("job")},
        "steady_throughput": {k: steady_throughput(r) for k, r in runs.items() if k.startswith("job")},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t = time.perf_counter()
    result = run_benchmark(args)
    print(format_console(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures: {args.json}" + (f"; report: {args.results_md}" if args.results_md else "")
          + f" ({time.perf_counter() - t:.0f} s in all)")
    if args.results_md:
        args.results_md.write_text(results_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

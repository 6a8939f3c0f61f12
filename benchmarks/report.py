"""The benchmark's figures as a console table and as benchmarks/RESULTS.md, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

GIB = 2**30
RUN_LABELS = {"naive": "naive serial loop", "bound": "serial bound", "job_warm": "Ray Data job, warm model pool",
              "job_cold": "Ray Data job, its own model actors"}
VARIANT_LABELS = {"warm": "warm model pool", "cold": "job's own actors"}


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, library versions, GPU, and the load average when the run began."""
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib * 1024 / GIB, 1),
            "gpus": gpus, "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def _gpu_text(value: Any) -> str:
    return value if isinstance(value, str) else f"mean {value['mean']:.0f}%, max {value['max']:.0f}%"


def _run_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, run in result["runs"].items():
        walls = sorted(r["wall_s"] for r in run.get("repeats", [run]))
        spread = f" ({walls[0]:.1f}-{walls[-1]:.1f})" if len(walls) > 1 else ""
        rows.append([f"{RUN_LABELS[key.removesuffix('_4n')]}", str(run["patients"]), str(run["radiographs"]),
                     f"{run['wall_s']:.1f}{spread}",
                     f"{run['radiographs_per_second']:.2f}", f"{run['peak_memory_bytes'] / GIB:.2f}",
                     str(run["peak_memory_processes"])])
    return rows


RUN_HEADER = ["run", "patients", "radiographs", "wall s (range)", "radiographs/s", "peak memory GiB", "processes"]


def _ratio_rows(result: dict[str, Any]) -> list[list[str]]:
    first = result["targets"][result["variants"][0]]
    return [[name, first[name]["target"], *(cell for v in result["variants"] for cell in (
        f"{result['targets'][v][name]['value']:.3f}", "yes" if result["targets"][v][name]["met"] else "NO"))]
            for name in first]


def _ratio_header(result: dict[str, Any]) -> list[str]:
    return ["ratio", "target", *(cell for v in result["variants"] for cell in (VARIANT_LABELS[v], "met"))]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths)),
                      *(line.format(*r) for r in rows)])


def _stages(run: dict[str, Any]) -> str:
    cpu = run.get("stages_cpu", {})
    return ", ".join(f"{k} {v:.2f} s (CPU {cpu.get(k, float('nan')):.2f} s)" for k, v in run.get("stages", {}).items())


def _startup(result: dict[str, Any], variant: str) -> str:
    """The cluster's start-up (excluded) and, for the job's own actors, the job's fixed start-up inside
    its wall time and its rate without it (not a target; says where the 4N/N ratio comes from)."""
    job, job4 = result["runs"][f"job_{variant}"], result["runs"][f"job_{variant}_4n"]
    text = (f"{VARIANT_LABELS[variant]}: Ray cluster start-up (ray.init and the cluster's first dataset, which creates "
            f"Ray Data's session actors, until the new cluster is quiet"
            + (", and the warm model pool" if variant == "warm" else "") + "; excluded from the job figures): "
            f"N {job['startup_s']:.1f} s, 4N {job4['startup_s']:.1f} s")
    if variant == "warm":
        return text + f"; of which the pool's start: N {job['pool_s']:.1f} s, 4N {job4['pool_s']:.1f} s"
    n, n4 = (result["steady_throughput"].get(k) for k in (f"job_{variant}", f"job_{variant}_4n"))
    if not n or not n4:
        return text + "; job start-up (until the model actors had loaded their models): not measured"
    return text + (f"; job start-up inside the wall time (driver, listing, model actors importing torch and loading "
                   f"their models): N {job['models_up_s']:.1f} s, "
                   f"4N {job4['models_up_s']:.1f} s; radiographs/s from then on: N {n:.2f}, 4N {n4:.2f} "
                   f"(4N / N {n4 / n:.3f})")


def _notes(result: dict[str, Any]) -> list[str]:
    runs = result["runs"]
    notes = [
        f"bundle: {result['bundle']['description']} ({result['bundle']['model_version']})",
        f"archive: {result['archive']['patients']} synthetic patients, JPEG, scale {result['archive']['scale']:g} "
        f"(long side {result['archive']['long_side_px'][0]}-{result['archive']['long_side_px'][1]} px)",
        *(_startup(result, v) for v in result["variants"]),
        "GPU utilisation during the job: " + "; ".join(f"{k} {_gpu_text(r['gpu_utilisation'])}" for k, r in runs.items()
                                                       if k.startswith("job")),
        "joint scores per run (all must match at N, and at 4N): "
        + ", ".join(f"{k} {r['joints']}" for k, r in runs.items()),
        f"naive and bound: {runs['naive']['spec']['threads']} torch thread(s) on {runs['naive']['spec']['device']}; "
        f"test-time augmentation {'on' if runs['naive']['spec']['tta'] else 'off'} in every run",
        f"naive stages: {_stages(runs['naive'])} (model loading {runs['naive']['load_s']:.1f} s, excluded)",
        f"bound stages: {_stages(runs['bound'])}",
        f"job config (resolved): {result['job_config']}",
        f"each run {result.get('repeats', 1)} time(s), each a fresh process (and cluster); every figure is from the "
        "try of median wall time, the range in brackets",
        f"memory: {result['memory_measure']} summed over the run's whole process tree, sampled every "
        f"{result['sample_interval_s']:g} s",
    ]
    for key in (k for k in runs if k.startswith("job")):
        ops = runs[key].get("operators", {})
        notes.append(f"{key} Ray Data operators (UDF seconds summed over tasks; first task, seconds into the "
                     "job): " + "; ".join(f"{op} {s.get('udf_s', 0):.1f} s, first at {s.get('first_task_s', float('nan')):.1f} s"
                                          for op, s in ops.items()) if ops else f"{key} Ray Data operators: not found in Ray Data's log")
        top = list(runs[key].get("peak_memory_by_process", {}).items())[:6]
        notes.append(f"{key} peak memory by process: " + ", ".join(f"{n} {b / GIB:.2f} GiB" for n, b in top))
    if result.get("profiled"):
        notes.insert(0, "PROFILED with py-spy (--profile): every timing is inflated; use these figures only to "
                        "see where the time goes")
    for variant, g in (result.get("gpu_target") or {}).items():
        if g:
            notes.append(f"GPU, {VARIANT_LABELS[variant]}: {g['value']:.1f} radiographs/s per GPU (target "
                         f"{g['target']}: {'met' if g['met'] else 'NOT met'})")
    return notes


def format_console(result: dict[str, Any]) -> str:
    return "\n\n".join([_table(RUN_HEADER, _run_rows(result)), _table(_ratio_header(result), _ratio_rows(result)),
                        "\n".join(_notes(result))])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
                      *(f"| {' | '.join(r)} |" for r in rows)])


def _status(result: dict[str, Any]) -> str:
    """Whether these figures are the issue's target configuration, and if not, why not."""
    reasons = []
    if result["patients"] != 50:
        reasons.append(f"N = {result['patients']}, not 50")
    if "demo bundle" not in result["bundle"]["description"]:
        reasons.append(f"bundle: {result['bundle']['description']}")
    if result["machine"]["load_average_1m_at_start"] > 0.5:
        reasons.append(f"the machine was busy (load average {result['machine']['load_average_1m_at_start']})")
    if result.get("profiled"):
        reasons.append("profiled with py-spy")
    if not reasons:
        return "Status: the issue's target configuration (demo bundle, N = 50, quiet machine)."
    return ("Status: **a check run, not the target measurement** (" + "; ".join(reasons) + "). Rerun the "
            "command in benchmarks/README.md on a quiet machine for the figures the targets refer to.")


def results_markdown(result: dict[str, Any]) -> str:
    """The whole of benchmarks/RESULTS.md for one run of the benchmark."""
    m = result["machine"]
    gpus = ", ".join(m["gpus"]) or "none"
    return "\n".join([
        "# Scoring benchmark results",
        "",
        f"Written by `benchmarks/bench_scoring.py` on {result['finished_at']}. Command:",
        "",
        f"    {result['command']}",
        "",
        _status(result),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']} GiB; GPU: {gpus}",
        f"- torch {m['torch']}, ray {m['ray']}, Python {m['python']}",
        f"- load average when the run began: {m['load_average_1m_at_start']} (other work on the machine skews "
        "every figure)",
        "",
        "## Runs",
        "",
        _md_table(RUN_HEADER, _run_rows(result)),
        "",
        "## Ratios and targets",
        "",
        _md_table(_ratio_header(result), _ratio_rows(result)),
        "",
        "## Notes",
        "",
        *(f"- {n}" for n in _notes(result)),
        "",
        "See benchmarks/README.md for what each run measures and where the time goes.",
        "",
    ])

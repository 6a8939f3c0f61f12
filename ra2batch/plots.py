"""Evaluation plots (``ra2batch evaluate --plots DIR``): where predictions and the truth disagree.

Three PNG files, from RA2-layout tables aligned by ``Patient_ID`` exactly as the scorer aligns them
(negative predictions clipped to 0, erosion and narrowing totals summed from the joint columns,
``Overall_Tol`` as the scorer takes it):

- ``predicted_vs_true.png``: predicted against true erosion and narrowing totals, one dot per patient;
- ``joint_error_map.png``: mean absolute error of every joint, laid out like the hands and feet
  (``ra2batch.report.layout``, the same schematic as the review site);
- ``bland_altman.png``: Bland-Altman plot of ``Overall_Tol`` (difference against mean, bias and 95%
  limits of agreement).

Matplotlib's object API is used (no pyplot), so plotting never touches a global backend or display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ra2batch import catalogue
from ra2batch.report import layout
from ra2batch.scorer import align

FILES = ("predicted_vs_true.png", "joint_error_map.png", "bland_altman.png")
_DAMAGE = {"E": ("Overall_erosion", "erosion"), "J": ("Overall_narrowing", "joint-space narrowing")}


def aligned_scores(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Joint columns of both tables, aligned; the predicted ``Overall_Tol`` is kept when it is complete,
    as the scorer's SC1 uses it."""
    p, t, _ = align(pred, truth)
    cols = list(catalogue.COLUMNS)
    pj = p[cols].apply(pd.to_numeric).astype(float).clip(lower=0)
    tol = pd.to_numeric(p.get("Overall_Tol", pd.Series(index=p.index, dtype=float)), errors="coerce")
    pj["Overall_Tol"] = tol.clip(lower=0) if tol.notna().all() else pj.sum(axis=1)
    tj = t[cols].astype(float)
    tj["Overall_Tol"] = tj.sum(axis=1)
    return pj, tj


def _damage_total(scores: pd.DataFrame, damage: str) -> np.ndarray:
    cols = list(catalogue.EROSION if damage == "E" else catalogue.NARROWING)
    return scores[cols].sum(axis=1).to_numpy()


def predicted_vs_true(p: pd.DataFrame, t: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(9, 4.4), layout="constrained")
    for ax, damage in zip(fig.subplots(1, 2), ("E", "J")):
        truth, pred = _damage_total(t, damage), _damage_total(p, damage)
        top = max(float(truth.max(initial=0)), float(pred.max(initial=0)), 1.0) * 1.05
        ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="perfect agreement")
        ax.scatter(truth, pred, s=18, alpha=0.7, color="tab:blue" if damage == "E" else "tab:orange")
        ax.set(xlim=(0, top), ylim=(0, top), aspect="equal", xlabel=f"true {_DAMAGE[damage][0]}",
               ylabel=f"predicted {_DAMAGE[damage][0]}", title=f"{_DAMAGE[damage][1]} ({len(truth)} patients)")
        ax.legend(loc="upper left", fontsize=8)
    return fig


def joint_error_map(p: pd.DataFrame, t: pd.DataFrame) -> Figure:
    """Mean absolute error per joint on the schematic hands and feet, one row per damage type."""
    mae = (p - t).abs().mean(axis=0)  # per column
    fig = Figure(figsize=(13, 7.2), layout="constrained")
    axes = fig.subplots(2, len(catalogue.LIMBS))
    for row, damage in enumerate(("E", "J")):
        cols = [j.column for j in catalogue.JOINTS if j.damage == damage]
        vmax = max(float(mae[cols].max()), 1e-6)
        for ax, limb in zip(axes[row], catalogue.LIMBS):
            aspect = layout.ASPECT[catalogue.limb_kind(limb)]
            for ray in layout.outline(limb):
                xs, ys = zip(*ray)
                ax.plot(xs, [y * aspect for y in ys], color="0.85", lw=5, solid_capstyle="round", zorder=1)
            joints = catalogue.joints_for(limb=limb, damage=damage)
            xy = np.array([layout.position(j.column) for j in joints])
            err = mae[[j.column for j in joints]].to_numpy()
            dots = ax.scatter(xy[:, 0], xy[:, 1] * aspect, c=err, cmap="Reds", vmin=0, vmax=vmax, s=170,
                              edgecolors="0.3", linewidths=0.6, zorder=2)
            for (x, y), e in zip(xy, err):
                ax.annotate(f"{e:.2f}", (x, y * aspect), ha="center", va="center", fontsize=6, zorder=3,
                            color="white" if e > 0.6 * vmax else "black")
            ax.set(xlim=(-0.05, 1.05), ylim=(aspect * 1.02, -0.02), aspect="equal", xticks=[], yticks=[])
            ax.set_title(f"{limb} {_DAMAGE[damage][1]}", fontsize=9)
        fig.colorbar(dots, ax=list(axes[row]), shrink=0.8, label=f"mean |error|, {_DAMAGE[damage][1]}")
    fig.suptitle(f"Per-joint mean absolute error ({len(p)} patients)")
    return fig


def bland_altman(p: pd.DataFrame, t: pd.DataFrame) -> Figure:
    """Difference (predicted - true) of Overall_Tol against the mean of the two, with bias and limits."""
    pred, truth = p["Overall_Tol"].to_numpy(), t["Overall_Tol"].to_numpy()
    mean, diff = (pred + truth) / 2, pred - truth
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(mean, diff, s=18, alpha=0.7)
    upper, lower = bias + 1.96 * sd, bias - 1.96 * sd
    for y, label, style in ((bias, f"bias {bias:+.2f}", "-"), (upper, f"+1.96 SD {upper:+.2f}", "--"),
                            (lower, f"-1.96 SD {lower:+.2f}", "--")):
        ax.axhline(y, color="tab:red", ls=style, lw=1)
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8,
                    color="tab:red")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel="mean of predicted and true Overall_Tol", ylabel="predicted - true Overall_Tol",
           title=f"Bland-Altman, Overall_Tol ({len(diff)} patients)")
    return fig


def write_plots(pred: pd.DataFrame, truth: pd.DataFrame, dest: str | Path) -> list[Path]:
    """Write the three evaluation PNGs into ``dest`` (created if needed); returns their paths.

    Raises ``ScoringError`` (from the scorer's alignment) when a truth patient has no prediction.
    """
    p, t = aligned_scores(pred, truth)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in zip(FILES, (predicted_vs_true, joint_error_map, bland_altman)):
        draw(p, t).savefig(out / name, dpi=110)
        paths.append(out / name)
    return paths

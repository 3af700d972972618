"""PNG plots from the result rows: one figure per family, one panel per (mode, mask, ...).

Each panel plots throughput (TFLOP/s or GB/s) against the case's swept size, one line per
provider; a panel with a single size becomes a bar chart.  matplotlib runs on the Agg backend.
"""
from __future__ import annotations

import collections
import math
import os
from typing import Dict, List


def plot_all(rows: List[Dict], out_dir: str) -> List[str]:
    """One ``<family>.png`` per family with measured rows; returns the written paths."""
    try:
        import matplotlib
    except ImportError:
        print("fastattn bench: matplotlib is not installed, no plots (pip install fastattn[bench])")
        return []
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    families = collections.OrderedDict()
    for r in rows:
        if r["status"] == "ok":
            families.setdefault(r["family"], collections.OrderedDict()).setdefault(
                r["panel"], []).append(r)
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colors = {name: f"C{i % 10}" for i, name in enumerate(providers)}  # one color per provider
    paths = []
    for family, panels in families.items():
        cols = min(4, len(panels))
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
        for ax, (panel, panel_rows) in zip(axes.flat, panels.items()):
            _panel(ax, panel, panel_rows, colors)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        device = rows[0]["device"]
        fig.suptitle(f"fastattn bench: {family} ({device})")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{family}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _panel(ax, title: str, rows: List[Dict], colors: Dict[str, str]) -> None:
    sweep, unit = rows[0]["sweep"], rows[0]["throughput_unit"]
    series = collections.OrderedDict()
    for r in rows:
        series.setdefault(r["provider"], []).append((r["params"][sweep], r["throughput"]))
    xs = sorted({x for points in series.values() for x, _ in points})
    if len(xs) == 1:
        names = list(series)
        ax.bar(range(len(names)), [series[n][0][1] for n in names],
               color=[colors[n] for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    else:
        for name, points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name,
                    color=colors[name])
        ax.set_xscale("log", base=2)
        ax.set_xlabel(sweep)
        ax.legend(fontsize=6)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)

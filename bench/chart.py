"""The bench's chart: seed, ours and the limit per phase, medians with min–max whiskers.

matplotlib is a bench-only dependency (`pip install -e '.[bench]'`, which `make bench`
does); without it `make bench-docs` still renders the tables and says it drew nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.results import PHASES

CONTESTANTS = (
    ("seed", "seed (article)", "#c44e52"),
    ("ours", "ours", "#4c72b0"),
    ("limit", "limit (see the table)", "#8c8c8c"),
)
# Rates only, and one purge comparison per action: the chart stays readable.
CHARTED = ("purge.delete", "purge.anonymize", "purge.archive", "purge.all", "publish", "e2e")


def draw(result: dict[str, Any], path: Path) -> bool:
    """Write the chart to `path`; False (and a note on stderr) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "[bench] matplotlib not installed: no chart (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return False
    phases = [(n, result["phases"][n]) for n in CHARTED if n in result["phases"]]
    width = 0.25
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=110)
    for i, (key, label, color) in enumerate(CONTESTANTS):
        xs, medians, low, high = [], [], [], []
        for x, (_, entry) in enumerate(phases):
            values = [r[key] for r in entry["round"] if r[key] is not None]
            if not values or entry[key] is None:
                continue
            xs.append(x + (i - 1) * width)
            medians.append(entry[key])
            low.append(entry[key] - min(values))
            high.append(max(values) - entry[key])
        bars = ax.bar(
            xs,
            medians,
            width,
            yerr=[low, high],
            capsize=2,
            label=label,
            color=color,
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
        ax.bar_label(
            bars, labels=[f"{m:,.0f}" for m in medians], fontsize=6.5, rotation=90, padding=2
        )
    ax.set_yscale("log")
    ax.set_xticks(
        range(len(phases)),
        [f"{PHASES[n].title}\n{PHASES[n].unit}" for n, _ in phases],
        fontsize=7.5,
    )
    ax.set_ylabel("median of rounds (log scale; whiskers: min–max)")
    s, load = result["settings"], result["load"]
    ax.set_title(
        f"{s['rows']:,} rows, {s['rounds']} round(s), {result['machine']['cores']} cores, "
        f"load {load['start'][0]:.1f} at start, commit {result['commit'][:12]}",
        fontsize=9,
    )
    ax.legend(fontsize=7.5, loc="upper right")
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

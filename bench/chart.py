"""The bench's chart: seed, ours and the limit per phase, medians with min–max whiskers.

matplotlib is a bench-only dependency (`pip install -e '.[bench]'`, which `make bench`
does); without it the bench still writes its JSON and markdown and says it drew nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

CONTESTANTS = (
    ("seed", "seed (article)", "#c44e52"),
    ("ours", "ours", "#4c72b0"),
    ("limit", "limit (raw DELETE / ProducerPerformance)", "#8c8c8c"),
    ("limit2", "raw+outbox (same work as ours, one statement)", "#cccccc"),
)


def _phases(a: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(label, {contestant: summary}) per phase, in table order."""
    phases = [
        (
            f"purge {p}\nrows/s",
            {
                "seed": a[f"purge.{p}.seed"],
                "ours": a[f"purge.{p}.ours"],
                "limit": a[f"purge.{p}.raw"],
                "limit2": a[f"purge.{p}.raw+outbox"],
            },
        )
        for p in ("delete", "anonymize", "archive", "all")
    ]
    phases.append(
        (
            "publish\nevents/s",
            {
                "seed": a["publish.seed"],
                "ours": a["publish.ours"],
                "limit": a["publish.producer_performance"],
            },
        )
    )
    if "e2e.ours" in a:
        phases.append(("end to end\nentities/s", {"seed": a["e2e.seed"], "ours": a["e2e.ours"]}))
    return phases


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
    a, meta = result["aggregate"], result["meta"]
    phases = _phases(a)
    width = 0.2
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=110)
    for i, (key, label, color) in enumerate(CONTESTANTS):
        xs, medians, low, high = [], [], [], []
        for x, (_, values) in enumerate(phases):
            if key in values:
                s = values[key]
                xs.append(x + (i - 1.5) * width)
                medians.append(s["median"])
                low.append(s["median"] - s["min"])
                high.append(s["max"] - s["median"])
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
            bars,
            labels=[f"{m:,.0f}" for m in medians],
            fontsize=6.5,
            rotation=90,
            padding=2,
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(phases)), [label for label, _ in phases], fontsize=8)
    ax.set_ylabel("per second, median of rounds (log scale; whiskers: min–max)")
    ratio = a.get("e2e.ours/seed", {}).get("median")
    subtitle = f"; end to end ours/seed {ratio:.2f}× (goal ≥ 20×)" if ratio else ""
    ax.set_title(
        f"{meta['rows']:,} rows, {meta['rounds']} round(s), {meta['machine']['cores']} cores, "
        f"load {meta['machine']['load_avg_at_start'][0]:.1f} at start{subtitle}",
        fontsize=9,
    )
    ax.legend(fontsize=7.5, loc="upper right", ncols=2)
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

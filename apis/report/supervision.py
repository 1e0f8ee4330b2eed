"""The supervision table (the paper's Table 2): val mask AP of one config trained under several kinds of
supervision, as ``bench/bench_supervision.py`` writes them (``OUT/<row>/seed<K>/eval.json``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

REFERENCE = "full masks"
"""The row the others are compared with (their share of its mask AP, same seeds)."""


def read_supervision(out_dir: str | Path) -> list[dict]:
    """Every finished (row, seed) under ``out_dir``: the metrics of its ``eval.json`` (``row``, ``seed``,
    ``train_s``, ``segm/AP``, ...), the reference row first, then by row folder and seed."""
    out_dir = Path(out_dir)
    paths = sorted(out_dir.glob("*/seed*/eval.json"))
    if not paths:
        raise FileNotFoundError(f"{out_dir}: no <row>/seed<K>/eval.json (is this a bench_supervision.py --out?)")
    results = [json.loads(path.read_text()) for path in paths]
    return sorted(results, key=lambda r: r["row"] != REFERENCE)  # stable: folder order otherwise


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def supervision_table(results: list[dict], reference: list[dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per supervision, mean ± std (sample std) over its seeds, and its share of
    the full-mask AP of the same seeds (``reference``: the full-mask results to compare with; default: those
    among ``results``)."""
    by_row: dict[str, list[dict]] = {}
    for result in results:
        by_row.setdefault(result["row"], []).append(result)
    full_by_seed = {r["seed"]: r["segm/AP"] for r in (reference or by_row.get(REFERENCE, []))}
    header = ["supervision", "seeds", "mask AP", "% of full masks (same seeds)", "AP50", "box AP",
              "train min (mean)"]
    rows = []
    for name, runs in by_row.items():
        mask_ap = [r["segm/AP"] for r in runs]
        seeds = [r["seed"] for r in runs]
        share = "-"  # no full-mask run of these seeds, or full masks learnt nothing (AP 0: no share to give)
        full = [full_by_seed[k] for k in seeds if k in full_by_seed]
        if len(full) == len(seeds) and statistics.mean(full) > 0:
            share = f"{100 * statistics.mean(mask_ap) / statistics.mean(full):.0f} %"
        rows.append([name, ", ".join(map(str, seeds)), _mean_std(mask_ap), share,
                     _mean_std([r["segm/AP50"] for r in runs]), _mean_std([r["bbox/AP"] for r in runs]),
                     f"{statistics.mean(r['train_s'] for r in runs) / 60:.1f}"])
    return header, rows

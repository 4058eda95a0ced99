"""Calibrate a pruning study before trusting it: a grid of training settings, each run as a small
study (Full, Random at the smallest rate, the random-init floor) evaluated on a validation part of
the training corpus, and a table of how far each setting separates Full from the floor and from
Random (paired Δ ± SE, Δ/SE) per CPU-minute.

    python launch/calibrate.py --config configs/experiments/rna-calibrate.toml \\
        --grid training.lr=0.001,0.003 --grid training.steps=1000,2000 \\
        --out runs/cal-rna --results results/calibration/rna

Each grid point is its own study directory (OUT/<key=value,...>), so a rerun resumes; the table
(sweep.csv, sweep.md) is rewritten from whatever points have finished. Pick the cheapest setting
whose held-out MLM gate (≥ 3 SE for both checks) passes with room to spare, and write it into the
verdict config.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="a calibration study config (corpus.calibrate = true, "
                        "arms Full/Random/floor)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config key and the values to try (JSON each); repeat for a product grid")
    p.add_argument("--out", required=True, help="folder of the grid points' study directories")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="where to write sweep.csv and sweep.md (default: --out)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: tabulate the grid points that have finished")
    return p.parse_args(argv)


def grid_points(grid: list[str]) -> list[dict]:
    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"error: --grid {item!r}: expected KEY=V1,V2,...")
        axes.append([(key, _value(v)) for v in values.split(",")])
    return [dict(c) for c in itertools.product(*axes)]


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def point_dir(out: Path, point: dict) -> Path:
    return out / ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def summarize(study_dir: Path, point: dict) -> dict | None:
    """One grid point's row: held-out MLM loss of Full, Random (smallest rate), floor; the gate's
    two paired checks; the pretraining wall time of one Full run."""
    from bioprune.engine.experiments.report import gate, index_rows, mean_se, paired, read_rows

    if not (study_dir / "results.csv").exists():
        return None
    values, arms, _ = index_rows(read_rows(study_dir / "results.csv"))
    rand = sorted((a for a in arms if a.strategy == "random"), key=lambda a: a.rate)
    full = values.get(("full", "mlm", "loss"))
    floor = values.get(("init", "mlm", "loss"))
    small = values.get((rand[0].name, "mlm", "loss")) if rand else None
    if not full:
        return None
    row = dict(point)
    row["full_loss"], row["full_se"], row["seeds"] = mean_se(full.values())
    if small:
        row["random_arm"] = rand[0].name
        row["random_loss"] = mean_se(small.values())[0]
        p = paired(full, small, higher_is_better=False)
        row.update(full_vs_random=p.delta, full_vs_random_se=p.se, full_vs_random_z=p.z)
    if floor:
        p = paired(full, floor, higher_is_better=False)
        row["floor_loss"] = mean_se(floor.values())[0]
        row["full_vs_floor_z"] = p.z
    walls = [json.loads(m.read_text())["wall_s"]
             for m in (study_dir / "arms" / "full").glob("s*/pretrain/_DONE.json")]
    row["full_pretrain_s"] = round(sum(walls) / len(walls), 1) if walls else None
    # the study's own held-out MLM gate, on the calibration arms
    row["gate"] = "passes" if gate(full, floor, False, small, need_random=True).passed else "fails"
    return row


def write_table(rows: list[dict], results: Path) -> None:
    from bioprune.engine.io.atomic import write_rows_csv, write_text

    results.mkdir(parents=True, exist_ok=True)
    write_rows_csv(results / "sweep.csv", rows)

    def num(v, fmt):
        return "—" if v is None or v != v else format(v, fmt)

    keys = list(dict.fromkeys(k for r in rows for k in r if "." in k))   # the grid's keys
    lines = ["# Calibration sweep (validation part of the training corpus; "
             "never the held-out part)",
             "", "Held-out-style MLM loss on the validation part, mean ± SE over seeds; the two "
             "gate checks are paired by seed (Δ/SE, positive = Full better); pretrain s = one Full "
             "run's wall time (one thread).", "",
             "| " + " | ".join([*[k.split(".")[-1] for k in keys], "Full", "Random", "floor",
                                "Full − Random", "Δ/SE vs Random", "Δ/SE vs floor",
                                "pretrain s", "gate"]) + " |",
             "|" + "---|" * (len(keys) + 8)]
    for r in rows:
        lines.append("| " + " | ".join([
            *[str(r[k]) for k in keys],
            f"{num(r['full_loss'], '.4f')} ± {num(r['full_se'], '.4f')}",
            f"{num(r.get('random_loss'), '.4f')} ({r.get('random_arm', '—')})",
            num(r.get("floor_loss"), ".4f"),
            f"{num(r.get('full_vs_random'), '+.4f')} ± {num(r.get('full_vs_random_se'), '.4f')}",
            num(r.get("full_vs_random_z"), "+.1f"), num(r.get("full_vs_floor_z"), "+.1f"),
            num(r.get("full_pretrain_s"), ".0f"), r["gate"]]) + " |")
    write_text(results / "sweep.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    from bioprune.engine.experiments.config import load_config
    from bioprune.engine.experiments.study import Study

    args = parse_args(argv)
    points = grid_points(args.grid) or [{}]
    out = Path(args.out)
    rows = []
    for point in points:
        d = point_dir(out, point) if point else out
        if not args.table_only:
            Study(load_config(args.config, point), d).run()
        row = summarize(d, point)
        if row:
            rows.append(row)
    if not rows:
        print("no grid point has finished yet", file=sys.stderr)
        return 1
    results = Path(args.results or out)
    write_table(rows, results)
    print(f"wrote {results / 'sweep.md'} ({len(rows)} of {len(points)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory and time per rank of the real scoring run (adapt + Fisher + scores) for ZeRO
stage 0 vs 3 on 1 vs 2 ranks: the README's ZeRO table.

    python launch/bench/zero.py --model esmc --model-size 600m --runs 3:2 0:1 3:1 \\
        --out runs/bench_zero/esmc600m
    python launch/bench/zero.py --model rnafm --model-size tiny --n 64 --out runs/bench_zero/tiny

Each configuration STAGE:RANKS is one ``launch/score.py`` run (``deepspeed --num_gpus RANKS``
for RANKS > 1) on the first --n proteins of NetSurfP (or RNA records of the sample corpus),
cropped to --max-length, with fine-tuning on (--adapt-steps optimizer steps on D_sub) and one
mask per sequence. Peak memory is each rank's peak RSS during each phase (VmHWM, reset
between phases), as recorded by the run in its manifest (``zero.peak_memory_mb_per_rank``);
times and sequences/s come from the manifest, tokens/s counts real tokens (residues + BOS +
EOS). Runs are sequential (the table is only fair when one runs at a time) and resumable: a
configuration whose run finished is read back.
Writes OUT/results.json and OUT/results.md and prints the markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="esmc", help="model family (esmc, rnafm, esm2)")
    p.add_argument("--model-size", default="600m", help="architecture size")
    p.add_argument("--runs", nargs="+", default=["3:2", "0:1", "3:1"], metavar="STAGE:RANKS",
                   help="configurations, run in this order")
    p.add_argument("--n", type=int, default=64, help="sequences scored")
    p.add_argument("--subset-size", type=int, default=16, help="D_sub (adapt + Fisher)")
    p.add_argument("--adapt-steps", type=int, default=2,
                   help="optimizer steps of adaptation (D_sub / steps = the global batch)")
    p.add_argument("--max-length", type=int, default=64, help="residues kept per sequence")
    p.add_argument("--micro-batch-size", type=int, default=4, help="per rank")
    p.add_argument("--offload", choices=("none", "cpu"), default="none",
                   help="ZeRO-Infinity offload for the stage-3 runs")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--out", required=True, help="runs and results go here")
    return p.parse_args(argv)


def corpus(args, out: Path) -> Path:
    """The first --n records of the shared data as a CSV (id, sequence)."""
    from bioprune.engine.data.paths import data_dir

    path = out / f"input-{args.model}-{args.n}.csv"
    if path.exists():
        return path
    protein = args.model in ("esmc", "esm2")
    rows = []
    if protein:
        with open(data_dir() / "protein" / "netsurfp_ss3.csv") as f:
            rows = [(r["id"], r["sequence"]) for _, r in zip(range(args.n), csv.DictReader(f))]
    else:
        with open(data_dir() / "rna" / "bprna_nf15.csv") as f:
            reader = csv.reader(f)
            next(reader)
            rows = [(r[0], r[1]) for _, r in zip(range(args.n), reader)]
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("id", "sequence"), *rows])
    return path


def command(args, data: Path, stage: int, ranks: int, out: Path) -> list[str]:
    global_batch = max(1, args.subset_size // args.adapt_steps)
    flags = ["--data", str(data), "--model", args.model, "--model-size", args.model_size,
             "--max-length", str(args.max_length), "--subset-size", str(args.subset_size),
             "--finetune-epochs", "1", "--finetune-warmup", "1",
             "--finetune-global-batch", str(global_batch),
             "--micro-batch-size", str(args.micro_batch_size), "--mask-draws", "1",
             "--chunk-size", str(args.n), "--zero-stage", str(stage), "--out", str(out)]
    if stage == 3 and args.offload != "none":
        flags += ["--offload", args.offload]
    from bioprune.engine.runtime.launching import entry_command

    return entry_command(ROOT / "launch" / "score.py", flags, ranks)


def tokens(run: Path, max_length: int) -> int:
    from bioprune.engine.io.scores import read_scores

    lengths = read_scores(run / "scores", columns=("length",))["length"]
    return int(sum(min(int(n), max_length) + 2 for n in lengths))


def measure(args, data: Path, spec: str, out: Path) -> dict:
    stage, ranks = (int(x) for x in spec.split(":"))
    run = out / f"z{stage}-r{ranks}"
    manifest = run / "manifest.json"
    if not (manifest.exists() and json.loads(manifest.read_text()).get("status") == "finished"):
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        t = time.time()
        p = subprocess.run(command(args, data, stage, ranks, run), env=env, text=True,
                           capture_output=True, timeout=args.timeout)
        (out / f"z{stage}-r{ranks}.log").write_text(p.stdout[-20000:] + p.stderr[-20000:])
        if p.returncode != 0:
            return {"stage": stage, "ranks": ranks, "failed": p.returncode,
                    "seconds": round(time.time() - t, 1)}
    m = json.loads(manifest.read_text())
    peaks = m["zero"]["peak_memory_mb_per_rank"]
    t = m["timings_s"]
    n_tok = tokens(run, args.max_length)
    return {"stage": stage, "ranks": ranks, "offload": m["zero"]["offload"],
            "peak_rss_gb": {ph: [round(v / 1024, 2) for v in peaks[ph]["rss"]] for ph in peaks},
            "seconds": {k: t[k] for k in ("corpus", "adapt", "fisher", "score", "total") if k in t},
            "score_tokens": n_tok, "score_tokens_per_s": round(n_tok / t["score"], 1),
            "parameters": m["parameters"]["total"]}


def table(rows: list[dict]) -> str:
    head = ("| stage | ranks | peak RSS per rank, GB (adapt / Fisher / score) | adapt s | "
            "Fisher s | score s | score tokens/s |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['stage']} | {r['ranks']} | failed (exit {r['failed']}, see log) "
                         f"| | | | |")
            continue
        pk = r["peak_rss_gb"]
        per_rank = ", ".join(" / ".join(f"{pk[ph][i]:.2f}" for ph in ("adapt", "fisher", "score"))
                             for i in range(r["ranks"]))
        s = r["seconds"]
        lines.append(f"| {r['stage']} | {r['ranks']} | {per_rank} | {s.get('adapt', 0):.0f} | "
                     f"{s.get('fisher', 0):.0f} | {s.get('score', 0):.0f} | "
                     f"{r['score_tokens_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    data = corpus(args, out)
    rows = []
    for spec in args.runs:
        rows.append(measure(args, data, spec, out))
        print(json.dumps(rows[-1]), flush=True)
    md = table(rows)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

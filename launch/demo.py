"""The whole chain on the sample data, on 2 CPU ranks: score → select (CCI, Top-I) → pretrain.

    make demo            # = python launch/demo.py --out runs/demo          (tiny RNA-FM, RNA)
    make demo-esm2       # = python launch/demo.py --model esm2 --out runs/demo-esm2  (proteins)

Every step is the real entry point started through the real ``deepspeed`` launcher, exactly as
on a cluster; this script only strings them together and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# the sample corpus of each molecule: all six RNA files, or the NetSurfP proteins
CORPUS = {"rna": ["rna/archiveII.csv", "rna/bprna_nf15.csv", "rna/rnacentral_sample.fasta",
                  "rna/rfam_RF00001.fasta", "rna/rfam_RF00005.fasta", "rna/rfam_RF00010.fasta"],
          "protein": ["protein/netsurfp_ss3.csv"]}


def data_files(molecule: str) -> list[str]:
    from bioprune.engine.data.paths import data_dir

    root = data_dir()
    missing = [n for n in CORPUS[molecule] if not (root / n).exists()]
    if missing:
        raise SystemExit(f"error: sample data missing in {root}: {missing}; set BIOPRUNE_DATA to "
                         "the folder holding rna/ and protein/")
    return [str(root / n) for n in CORPUS[molecule]]


def launch(script: str, args: list[str], ranks: int) -> float:
    from bioprune.engine.runtime.launching import child_env, entry_command

    cmd = entry_command(ROOT / "launch" / script, args, ranks)
    print("\n$ " + " ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True, env=child_env())
    return time.time() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="where everything lands")
    p.add_argument("--model", choices=("rnafm", "esmc", "esm2"), default="rnafm",
                   help="the tiny model of this family; its molecule picks the sample corpus "
                        "(rnafm: the RNA files; esmc, esm2: the NetSurfP proteins)")
    p.add_argument("--ranks", type=int, default=2, help="CPU ranks per step")
    p.add_argument("--fraction", type=float, default=0.1, help="coreset size as a corpus fraction")
    p.add_argument("--subset-size", type=int, default=2000, help="D_sub size")
    p.add_argument("--max-length", type=int, default=256, help="residues per sequence (crop)")
    p.add_argument("--pretrain-epochs", type=int, default=1, help="epochs on the CCI coreset")
    args = p.parse_args(argv)
    out = Path(args.out).absolute()
    from bioprune.engine.models import MOLECULE

    data = data_files(MOLECULE[args.model])
    wall = {}
    t0 = time.time()
    for step, script, argv in steps(args, out, data):
        wall[step] = launch(script, argv, args.ranks)
    total = time.time() - t0
    summary(out, wall, total)
    return 0


def steps(args, out: Path, data: list[str]) -> list[tuple[str, str, list[str]]]:
    """(name, launcher, argv) of each step, the argv made from the launcher's settings."""
    from bioprune.engine.influence.settings import ScoreSettings
    from bioprune.engine.runtime.flags import to_argv
    from bioprune.engine.selection.pipeline import SelectSettings
    from bioprune.engine.training.pipeline import PretrainSettings

    common = dict(data=data, model=args.model, model_size="tiny", max_length=args.max_length,
                  corpus_cache=str(out / "corpus"))
    plan = [("score", "score.py", ScoreSettings(**common, subset_size=args.subset_size,
                                                finetune_epochs=1, out=str(out / "score")))]
    for strategy, name in (("cci", "cci"), ("topk", "topi")):
        plan.append((f"select {name}", "select_coreset.py", SelectSettings(
            scores=str(out / "score" / "scores"), strategy=strategy, fraction=args.fraction,
            out=str(out / name), data=data)))
    plan.append(("pretrain", "pretrain.py", PretrainSettings(
        **common, indices=str(out / "cci" / "coreset.npy"), epochs=args.pretrain_epochs,
        warmup=20, heldout_size=500, out=str(out / "pretrain_cci"))))
    return [(name, script, to_argv(settings)) for name, script, settings in plan]


def summary(out: Path, wall: dict, total: float) -> None:
    score = json.loads((out / "score" / "manifest.json").read_text())
    pre = json.loads((out / "pretrain_cci" / "manifest.json").read_text())
    lines = ["", "=" * 72, "bioprune demo: summary", "=" * 72,
             f"corpus          {score['counts']['sequences']} sequences "
             f"({score['counts'].get('cropped', 0)} cropped), D_sub {score['counts']['subset']}, "
             f"{score['parameters']['covered']} parameters covered"]
    for phase in ("corpus", "adapt", "fisher", "score"):
        if phase in score["timings_s"]:
            lines.append(f"  {phase:<14}{score['timings_s'][phase]:>8.1f} s   "
                         f"{score['throughput'].get(phase, '')}")
    for name in ("cci", "topi"):
        sel = json.loads((out / name / "selection.json").read_text())
        lines.append(f"select {name:<8} {sel.get('selected', sel.get('budget'))} of {sel['n']} "
                     f"-> {out / name}/coreset.npy, coreset.fasta, selection.json, *.png")
    last = pre["metrics"][-1] if pre.get("metrics") else {}
    loss, ppl = float(last.get("heldout_loss", "nan")), float(last.get("heldout_ppl", "nan"))
    lines.append(f"pretrain (CCI)  {pre['counts']['train']} sequences, "
                 f"{pre['counts']['steps']} steps, {pre['throughput'].get('train', '')}, "
                 f"held-out loss {loss:.3f} ppl {ppl:.2f}")
    lines.append("wall time       " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
                 + f"; total {total:.0f} s")
    lines.append(f"outputs         {out}  (score/ manifest.json, scores/, fisher.safetensors, "
                 "adapted/; cci/ topi/; pretrain_cci/ final/model.safetensors, metrics.csv)")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())

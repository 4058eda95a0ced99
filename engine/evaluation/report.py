"""``eval.md``: one Markdown table, a row per (task, metric), encoder and floor side by side."""
from __future__ import annotations


def _cell(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{m['mean']:.4f} ± {m['std']:.4f}"


def _describe(enc: dict) -> str:
    where = enc.get("path") or f"random init (seed {enc.get('init_seed')})"
    return f"{enc.get('model')} {enc.get('size')}: {where}"


def markdown(doc: dict) -> str:
    floor = doc.get("floor")
    lines = [f"# Evaluation of {_describe(doc['encoder'])}", ""]
    encoder = ("frozen (probes on fixed embeddings)" if doc.get("frozen") else
               "fine-tuned on sequence-level tasks (per-residue and pair tasks stay frozen)")
    lines.append(f"Encoder {encoder}"
                 f"; control: {doc.get('control') or 'none'}; mean ± std over "
                 f"{doc['manifest']['settings']['probe_seeds']} "
                 "probe seeds (mask seeds for mlm). Values are fractions.")
    lines.append("")
    head = "| task | metric | encoder |" + (" floor (random init) |" if floor else "") + \
        " n_train | n_test | head | frozen |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, t in doc["tasks"].items():
        ft = (floor or {}).get("tasks", {}).get(name, {})
        if not t.get("metrics"):
            lines.append(f"| {name} | – | {t.get('skipped', '')} |" + (" – |" if floor else "")
                         + f" {t.get('n_train')} | {t.get('n_test')} | – | – |")
            continue
        for metric, m in t["metrics"].items():
            row = f"| {name} | {metric} | {_cell(m)} |"
            if floor:
                row += f" {_cell(ft.get('metrics', {}).get(metric))} |"
            head_type = (t.get("head") or {}).get("type", "")
            row += f" {t.get('n_train')} | {t.get('n_test')} | {head_type} | {t.get('frozen')} |"
            lines.append(row)
    timings = doc["manifest"]["timings_s"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()), ""]
    return "\n".join(lines)

"""The project's throughput targets (README, GPU throughput) and how the benchmarks mark them
PASS / FAIL.

The benchmarks (``scoring.py``, ``kernel_ops.py``, ``attention.py``) put a ``targets`` list in
their JSON; each entry is one ``check``: the measured value, the bound, and ``pass`` = True /
False, or None when the target does not apply where it was measured (e.g. the H100 tokens/s
target on another device).
``gpu.py`` collects them into one table.
"""
from __future__ import annotations

#: scoring pass time ÷ training forward+backward time, same batch, same precision
SCORE_OVER_TRAIN_MAX = 1.1
#: fused kernels' throughput as a percentage of a cuBLAS GEMM of equal FLOPs
KERNEL_PCT_OF_GEMM_MIN = 70.0
#: ESM-C 600M scoring tokens/s per GPU on an H100 (bf16, one mask per sequence)
ESMC600M_TOKENS_PER_S_MIN = 80_000.0
#: scoring time per sequence of the default mask plan (4 copies) ÷ one 15 % mask, same code
DEFAULT_OVER_K1_MAX = 2.0


def check(name: str, value: float | None, op: str, bound: float, unit: str = "",
          applies: bool = True, note: str = "") -> dict:
    """One target: ``value op bound`` with op '<=' or '>='; ``applies=False`` (or no value)
    records it without a verdict."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', not {op!r}")
    ok = None
    if applies and value is not None:
        ok = value <= bound if op == "<=" else value >= bound
    return {"name": name, "value": value, "op": op, "bound": bound, "unit": unit, "pass": ok,
            "note": note}


def mark(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[ok]


def verdict(t: dict) -> str:
    return mark(t["pass"])


def _num(v: float, unit: str) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}" if unit != "%" else f"{v:.1f}%"


def print_targets(targets: list[dict], title: str = "targets") -> None:
    if not targets:
        return
    w = max(len(t["name"]) for t in targets)
    print(f"\n{title}:")
    for t in targets:
        unit = t["unit"]
        line = (f"  {t['name']:<{w}}  {_num(t['value'], unit):>12}  {t['op']} "
                f"{_num(t['bound'], unit):<9} {verdict(t)}")
        print(line + (f"  ({t['note']})" if t["note"] else ""))


def main(argv=None) -> int:
    import argparse
    argparse.ArgumentParser(
        description="The GPU throughput targets the benchmarks check (a library for scoring.py and "
                    "kernel_ops.py; run alone it lists the bounds).").parse_args(argv)
    print(f"scoring time <= {SCORE_OVER_TRAIN_MAX} x training forward+backward on the same batch")
    print(f"fused kernels >= {KERNEL_PCT_OF_GEMM_MIN:.0f}% of cuBLAS GEMM of equal FLOPs")
    print(f"scoring with the default masks <= {DEFAULT_OVER_K1_MAX} x one mask, per sequence")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

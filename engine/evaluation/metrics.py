"""Metrics (scikit-learn / scipy / torchmetrics, never hand-written formulas) and dot-bracket.

Classification and base pairs: scikit-learn; regression: scipy.

Base-pair metrics: for one sequence of length L the candidates are all pairs (i, j), i < j; a
pair is positive when the structure pairs i with j. Precision, recall, F1 and MCC are computed
on that binary vector per sequence (scikit-learn, zero_division = 0) and
averaged over the test sequences.
"""
from __future__ import annotations

import warnings

import numpy as np

OPEN_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}
UNPAIRED = set(".,:_-~")


def parse_dot_bracket(structure: str) -> list[tuple[int, int]]:
    """0-based (i, j), i < j, of every base pair; brackets ()[]{}<> (pseudoknots) and letter
    pairs Aa..Zz (upper opens, lower closes). ValueError on unbalanced brackets."""
    closers = {v: k for k, v in OPEN_CLOSE.items()}
    stacks: dict[str, list[int]] = {}
    pairs = []
    for pos, ch in enumerate(structure):
        if ch in UNPAIRED:
            continue
        if ch in OPEN_CLOSE or (ch.isalpha() and ch.isupper()):
            stacks.setdefault(ch, []).append(pos)
        elif ch in closers or (ch.isalpha() and ch.islower()):
            opener = closers.get(ch, ch.upper())
            stack = stacks.get(opener)
            if not stack:
                raise ValueError(f"unbalanced {ch!r} at position {pos + 1}")
            pairs.append((stack.pop(), pos))
        else:
            raise ValueError(f"unknown structure character {ch!r} at position {pos + 1}")
    left = [(k, v) for k, v in stacks.items() if v]
    if left:
        raise ValueError(f"unclosed {left[0][0]!r} at position {left[0][1][-1] + 1}")
    return sorted(pairs)


def pair_matrix(pairs, length: int) -> np.ndarray:
    m = np.zeros((length, length), dtype=bool)
    for i, j in pairs:
        m[i, j] = m[j, i] = True
    return m


def pair_metrics(true_pairs, pred_pairs, length: int) -> dict:
    """precision, recall, f1, mcc (scikit-learn) of predicted vs true base pairs of one sequence;
    0 where a metric is undefined (no predicted / no true pairs)."""
    from sklearn.metrics import matthews_corrcoef, precision_recall_fscore_support

    iu = np.triu_indices(length, k=1)
    t = pair_matrix(true_pairs, length)[iu]
    p = pair_matrix(pred_pairs, length)[iu]
    with warnings.catch_warnings():  # a sequence without pairs is a valid, degenerate case
        warnings.simplefilter("ignore")
        prec, rec, f1, _ = precision_recall_fscore_support(t, p, average="binary", zero_division=0)
        mcc = matthews_corrcoef(t, p)
    return {"precision": float(prec), "recall": float(rec), "f1": float(f1),
            "mcc": float(mcc)}


def greedy_pairs(prob: np.ndarray, threshold: float, min_loop: int = 3) -> list[tuple[int, int]]:
    """Pairs (i, j), j - i > min_loop, with prob > threshold, each base in at most one pair
    (highest probability first)."""
    L = prob.shape[0]
    iu, ju = np.triu_indices(L, k=min_loop + 1)
    p = prob[iu, ju]
    keep = p > threshold
    iu, ju, p = iu[keep], ju[keep], p[keep]
    used = np.zeros(L, dtype=bool)
    out = []
    for k in np.argsort(-p, kind="stable"):
        i, j = int(iu[k]), int(ju[k])
        if not used[i] and not used[j]:
            used[i] = used[j] = True
            out.append((i, j))
    return sorted(out)


def classification_metrics(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"acc": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def regression_metrics(y_true, y_pred) -> dict:
    from scipy.stats import pearsonr, spearmanr

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:  # a constant prediction has no rank order
        return {"spearman": 0.0, "pearson": 0.0}
    return {"spearman": float(spearmanr(y_true, y_pred).statistic),
            "pearson": float(pearsonr(y_true, y_pred).statistic)}


def summarize(values: list[float]) -> dict:
    """{"mean", "std" (sample std, ddof=1; 0 for one value), "values"}."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(x) for x in v]}

"""Bad records, counted and reported the same way however the corpus is built: the
--on-invalid modes, the error that lists the first MAX_LISTED bad records, the errors of a
whole input (empty, or every record bad under skip) and the rows of rejected.tsv."""
from __future__ import annotations

from bioprune.engine.data.corpus.layout import REJECTED
from bioprune.engine.data.readers import CorpusError, InputSpec

ON_INVALID = ("error", "skip")
MAX_LISTED = 20          # bad records listed in one error (error mode stops scanning there)


def tsv_field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def too_many_invalid(bad: list, total: int, complete: bool) -> CorpusError:
    head = (f"{total} invalid records" if complete else
            f"at least {total} invalid records (reading stopped after {MAX_LISTED})")
    allowed = ""
    lines = []
    for b in bad[:MAX_LISTED]:
        reason = b["reason"]
        k = reason.find(" (allowed for ")
        if k >= 0:   # say once what is allowed, not on every line
            reason, allowed = reason[:k], reason[k + 2:-1]
        lines.append(f"  {b['file']}: record {b['record']}"
                     + (f" (id {b['id']!r})" if b["id"] else "") + f": {reason}")
    if allowed:
        lines.append(f"  ({allowed}; check --molecule)")
    return CorpusError(
        f"{head}, the first {min(len(bad), MAX_LISTED)} listed below; fix or remove them, or pass "
        f"--on-invalid skip to drop them (they are then listed in {REJECTED})\n" + "\n".join(lines))



def check_file(spec: InputSpec, seen: int, nrej: int, on_invalid: str, first_rejected) -> None:
    """The errors of a whole input: no records at all, or (skip) no valid record."""
    if seen == 0 and not nrej:
        raise CorpusError("empty input file (no records)", path=spec.display,
                          hint="remove it from the inputs")
    if seen == nrej and on_invalid == "skip":
        raise CorpusError(f"all {nrej} records are invalid (record {first_rejected['record']}: "
                          f"{first_rejected['reason']})", path=spec.display,
                          hint="check --molecule and the file")



def raise_listed(rejected: list[dict], on_invalid: str) -> None:
    """At the end of an error-mode build: the bad records found (all of them, fewer than
    MAX_LISTED) as one error."""
    if len(rejected) == 1 and on_invalid == "error":
        b = rejected[0]
        raise CorpusError(b["reason"], path=b["file"], record=b["record"],
                          record_id=b["id"] or None,
                          hint=(b["hint"] or "fix or remove it")
                          + "; or pass --on-invalid skip to drop bad records")
    if rejected and on_invalid == "error":
        raise too_many_invalid(rejected, len(rejected), complete=True)


def rejected_row(r: dict) -> str:
    """One line of rejected.tsv (file, record, id, reason)."""
    return "\t".join((tsv_field(r["file"]), str(r["record"]), tsv_field(r["id"]),
                      tsv_field(r["reason"])))


"""Molecule-level residue alphabets: what a corpus record may contain and how it is normalised.

This is validation and normalisation of the *input text*, not model tokenisation (the model's
tokenizer lives with the model). Every alphabet is a 256-entry ``uint8`` lookup table, so a whole
chunk of a corpus is validated and normalised with one numpy gather: ``lut[raw_bytes]``.

RNA (``get_alphabet("rna")``)
    canonical ``A C G U``; ``T``/``t`` are read as ``U``; lowercase is read as uppercase;
    the IUPAC ambiguity codes ``R Y K M S W B D H V N`` are accepted, stored as their uppercase
    letter and counted per code (the RNA-FM tokenisation maps them to its unknown token).
    Anything else (digits, ``-``, ``.``, ``*``, ``X``, ``E``, ...) is invalid.
protein (``get_alphabet("protein")``, the ESM-C vocabulary)
    the 20 standard amino acids; ``X B Z U O`` (all ESM-C tokens) are accepted and counted per
    letter; lowercase is read as uppercase; ONE trailing ``*`` (the stop codon of a translated
    ORF) is stripped and counted. ``-``, ``.``, digits, ``J`` and an interior ``*`` are invalid.

Whitespace (space, tab, CR, LF, VT, FF) inside a sequence is ignored (table ``whitespace``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Alphabet", "get_alphabet", "MOLECULES", "WHITESPACE"]

#: bytes ignored inside a sequence (FASTA line breaks, CRLF files, stray spaces)
WHITESPACE = b" \t\r\n\v\f"

_RNA_CANONICAL = "ACGU"
_RNA_AMBIGUITY = "RYKMSWBDHVN"
_PROTEIN_CANONICAL = "ACDEFGHIKLMNPQRSTVWY"
_PROTEIN_NONSTANDARD = "XBZUO"


@dataclass(frozen=True, eq=False)
class Alphabet:
    """A residue alphabet.

    Attributes:
        name: ``"rna"`` or ``"protein"``.
        canonical: the canonical residues (uppercase), e.g. ``"ACGU"``.
        extra: accepted non-canonical letters (uppercase), each counted per letter.
        extra_class: what the extra letters are called in statistics
            (``"ambiguity_codes"`` for RNA, ``"nonstandard_residues"`` for protein).
        stop: the stop character stripped once from the end of a record (protein ``"*"``), or
            ``None``. Its lookup-table entry maps to itself; only its position decides validity.
        lut: ``uint8[256]``, raw byte -> normalised byte; 0 means invalid (whitespace is 0
            too: callers drop whitespace first, see ``whitespace``).
        whitespace: ``bool[256]``, bytes that are ignored inside a sequence.
        classes: class name -> human description, for messages and documentation.
        letter_class: normalised letter -> class name.
    """

    name: str
    canonical: str
    extra: str
    extra_class: str
    stop: str | None
    lut: np.ndarray
    whitespace: np.ndarray
    classes: dict = field(default_factory=dict)
    letter_class: dict = field(default_factory=dict)

    @property
    def accepted(self) -> str:
        """All accepted normalised letters (canonical + extra)."""
        return self.canonical + self.extra

    def allowed_text(self) -> str:
        """One line saying what a record may contain (used in error messages)."""
        return "; ".join(self.classes.values())

    def normalize(self, seq: str | bytes) -> bytes:
        """Normalise one sequence (whitespace dropped, stop stripped); ValueError if invalid.

        A convenience for single sequences (tests, downstream tasks). Corpus building uses the
        vectorised path in ``bioprune.engine.data.corpus.normalise``.
        """
        raw = seq.encode("latin-1") if isinstance(seq, str) else bytes(seq)
        a = np.frombuffer(raw, dtype=np.uint8)
        a = a[~self.whitespace[a]]
        out = self.lut[a]
        bad = np.flatnonzero(out == 0)
        if bad.size:
            p = int(bad[0])
            raise ValueError(
                f"invalid character {chr(a[p])!r} at position {p + 1}; "
                f"allowed: {self.allowed_text()}"
            )
        if self.stop is not None:
            s = ord(self.stop)
            if out.size and out[-1] == s:
                out = out[:-1]
            stars = np.flatnonzero(out == s)
            if stars.size:
                raise ValueError(
                    f"'{self.stop}' (stop) at position {int(stars[0]) + 1} is not at the end of "
                    "the sequence; only one trailing stop is allowed"
                )
        if out.size == 0:
            raise ValueError("empty sequence")
        return out.tobytes()


def _whitespace_table() -> np.ndarray:
    t = np.zeros(256, dtype=bool)
    t[np.frombuffer(WHITESPACE, dtype=np.uint8)] = True
    t.flags.writeable = False
    return t


def _lut(pairs: dict[str, str]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[ord(src)] = ord(dst)
    lut.flags.writeable = False
    return lut


def _case_pairs(letters: str) -> dict[str, str]:
    d = {}
    for c in letters:
        d[c] = c
        d[c.lower()] = c
    return d


def _rna() -> Alphabet:
    pairs = _case_pairs(_RNA_CANONICAL + _RNA_AMBIGUITY)
    pairs["T"] = "U"
    pairs["t"] = "U"
    letter_class = {c: "canonical" for c in _RNA_CANONICAL}
    letter_class.update({c: "ambiguity_codes" for c in _RNA_AMBIGUITY})
    return Alphabet(
        name="rna",
        canonical=_RNA_CANONICAL,
        extra=_RNA_AMBIGUITY,
        extra_class="ambiguity_codes",
        stop=None,
        lut=_lut(pairs),
        whitespace=_whitespace_table(),
        classes={
            "canonical": "canonical A C G U (T is read as U, lowercase as uppercase)",
            "ambiguity_codes": "IUPAC ambiguity codes R Y K M S W B D H V N "
            "(kept, counted; the model reads them as its unknown token)",
        },
        letter_class=letter_class,
    )


def _protein() -> Alphabet:
    pairs = _case_pairs(_PROTEIN_CANONICAL + _PROTEIN_NONSTANDARD)
    pairs["*"] = "*"
    letter_class = {c: "canonical" for c in _PROTEIN_CANONICAL}
    letter_class.update({c: "nonstandard_residues" for c in _PROTEIN_NONSTANDARD})
    letter_class["*"] = "stop"
    return Alphabet(
        name="protein",
        canonical=_PROTEIN_CANONICAL,
        extra=_PROTEIN_NONSTANDARD,
        extra_class="nonstandard_residues",
        stop="*",
        lut=_lut(pairs),
        whitespace=_whitespace_table(),
        classes={
            "canonical": "the 20 standard amino acids ACDEFGHIKLMNPQRSTVWY "
                         "(lowercase read as uppercase)",
            "nonstandard_residues": "X B Z U O (ESM-C tokens; kept, counted)",
            "stop": "one trailing '*' (stop codon; stripped, counted)",
        },
        letter_class=letter_class,
    )


_ALPHABETS: dict[str, Alphabet] = {}
MOLECULES = ("rna", "protein")


def get_alphabet(molecule: str) -> Alphabet:
    """The residue alphabet of ``molecule`` (``"rna"`` or ``"protein"``)."""
    key = str(molecule).lower()
    if key not in MOLECULES:
        raise ValueError(f"unknown molecule {molecule!r}; expected one of: {', '.join(MOLECULES)}")
    if key not in _ALPHABETS:
        _ALPHABETS[key] = _rna() if key == "rna" else _protein()
    return _ALPHABETS[key]

"""Does int8 rank as fp32 does, on the user's own weights? The probe photographs decide.

Twelve small public-domain / CC0 photographs ship in ``probe/`` with a phrase each
(licences in ``probe/README.md``). At export the model being exported scores every
phrase against every photograph twice, with fp32 and with int8, and int8 is kept only
when the two agree (``judge``). ``bench.backends`` prints the same figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBE_DIR = Path(__file__).with_name("probe")
# Spearman's rho between fp32's and int8's scores, over every (phrase, photograph) pair,
# below which int8 is refused: the bound, and what per-channel int8 keeps on the
# tiny model and on random ViT-B-32 with room to spare (docs/performance.md).
MIN_SPEARMAN = 0.95
# Two photographs whose fp32 scores differ by less than this are tied for a member: the
# results show 100 x cosine to one decimal. int8's best photograph must be fp32's best
# or tied with it; a strict top-1 would fail on a coin toss (the tiny model has one
# phrase whose two best photographs are 0.0004 apart) and say nothing about int8.
TIE = 0.001


def probe_set() -> tuple[list[Path], list[str]]:
    """The bundled photographs, and the phrase that describes each (same order)."""
    phrases = json.loads((PROBE_DIR / "phrases.json").read_text())
    return [PROBE_DIR / name for name in phrases], list(phrases.values())


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # ties share their mean rank, as Spearman's definition asks
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(values) < len(x):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else 0.0


@dataclass(frozen=True)
class Agreement:
    """How a candidate's probe scores compare with fp32's (rows: phrases, columns: photos)."""

    top1_same: int  # phrases whose int8 best photograph is fp32's best, or tied with it
    phrases: int
    top1_strict: int  # phrases whose best photograph is the very same one
    spearman: float  # over all (phrase, photograph) pairs
    passed: bool
    why: str  # empty when passed

    def figures(self) -> str:
        ties = self.top1_same - self.top1_strict
        tied = f" ({ties} within a tie of {TIE})" if ties else ""
        return f"top-1 {self.top1_same}/{self.phrases}{tied}, Spearman {self.spearman:.4f}"

    def as_meta(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}_top1": f"{self.top1_same}/{self.phrases}",
                f"{prefix}_top1_strict": f"{self.top1_strict}/{self.phrases}",
                f"{prefix}_spearman": f"{self.spearman:.4f}",
                f"{prefix}_kept": "1" if self.passed else "0", f"{prefix}_why": self.why}


def judge(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """int8 is kept only if, for every phrase, its best photograph is fp32's best (or tied
    with it, TIE), and Spearman's rho over all pairs is at least MIN_SPEARMAN; ``why``
    says which failed."""
    if candidate.shape != reference.shape or not np.isfinite(candidate).all():
        return Agreement(0, len(reference), 0, 0.0, False,
                         "its scores are not finite numbers of the right shape")
    picked = candidate.argmax(1)
    best = reference.max(1)
    same = int((reference[np.arange(len(reference)), picked] >= best - TIE).sum())
    strict = int((reference.argmax(1) == picked).sum())
    rho = spearman(reference, candidate)
    n = len(reference)
    faults = []
    if same < n:
        faults.append(f"it changes the best photograph for {n - same} of {n} phrases")
    if rho < MIN_SPEARMAN:
        faults.append(f"Spearman {rho:.4f} is below {MIN_SPEARMAN}")
    return Agreement(same, n, strict, rho, not faults, "; ".join(faults))



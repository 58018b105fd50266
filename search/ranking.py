"""Ranking arithmetic: one matrix product, ties broken by id, pages by offset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .models import Hit


def display_score(cosine: float) -> float:
    """CLIP's usual 0–100 scale (100 × cosine, floored at 0), one decimal."""
    return round(max(0.0, float(cosine)) * 100.0, 1)


@dataclass(frozen=True)
class ScoredHit:
    rank: int  # 1-based, in the whole ranking
    hit: Hit
    score: float  # raw cosine

    @property
    def display(self) -> float:
        return display_score(self.score)


@dataclass(frozen=True)
class Ranking:
    """Every candidate, best first. Paging reads it; it never calls Pixabay or CLIP."""

    entries: tuple[tuple[Hit, float], ...]
    folded: int = 0  # near-duplicates folded into a better-ranked entry (not in entries)

    def __len__(self) -> int:
        return len(self.entries)

    def page(self, offset: int = 0, top: int = 5) -> list[ScoredHit]:
        offset = max(0, offset)
        return [ScoredHit(offset + i + 1, hit, score)
                for i, (hit, score) in enumerate(self.entries[offset:offset + max(0, top)])]

    @property
    def ids(self) -> list[int | str]:
        return [hit.id for hit, _ in self.entries]

    @property
    def scores(self) -> list[float]:
        return [score for _, score in self.entries]

    def to_dict(self) -> dict:
        return {"entries": [[hit.to_dict(), score] for hit, score in self.entries],
                "folded": self.folded}

    @classmethod
    def from_dict(cls, d: Mapping) -> Ranking:
        folded = d.get("folded", 0)
        return cls(tuple((Hit.from_dict(h), float(s)) for h, s in d["entries"]),
                   folded if isinstance(folded, int) and folded >= 0 else 0)


def rank(hits: Sequence[Hit], vectors: np.ndarray, text: np.ndarray) -> Ranking:
    """Cosine of every (normalised) image vector with the text; best first, ties by id."""
    if len(hits) == 0:
        return Ranking(())
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.maximum(norms, 1e-12)
    t = np.asarray(text, dtype=np.float32)
    t = t / max(float(np.linalg.norm(t)), 1e-12)
    scores = (matrix @ t).tolist()
    # Ids are numbers (Pixabay) or strings (Openverse); one ranking holds one source's.
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].id))
    return Ranking(tuple((hits[i], float(scores[i])) for i in order))


def fold_near_duplicates(ranking: Ranking, vectors: Mapping, threshold: float) -> Ranking:
    """``ranking`` without the hits whose image vector has cosine >= ``threshold`` with a
    better-ranked hit that is kept; ``folded`` counts them. Best first, so the copy that
    ranks highest stands for the others; ``threshold`` above 1 folds nothing."""
    entries = ranking.entries
    if threshold > 1.0 or len(entries) < 2:
        return Ranking(entries, ranking.folded)
    matrix = np.stack([np.asarray(vectors[hit.id], dtype=np.float32) for hit, _ in entries])
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    cosines = matrix @ matrix.T
    kept: list[int] = []
    for i in range(len(entries)):
        if kept and float(cosines[i, kept].max()) >= threshold:
            continue
        kept.append(i)
    return Ranking(tuple(entries[i] for i in kept),
                   ranking.folded + len(entries) - len(kept))

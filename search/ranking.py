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
        return {"entries": [[hit.to_dict(), score] for hit, score in self.entries]}

    @classmethod
    def from_dict(cls, d: Mapping) -> Ranking:
        return cls(tuple((Hit.from_dict(h), float(s)) for h, s in d["entries"]))


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

"""Ranking arithmetic (a fake embedder is fine here: this is about ordering, not search)."""

import numpy as np

from search.models import Hit
from search.ranking import Ranking, display_score, rank


def hits(*ids):
    return [Hit(id=i, page_url=f"https://pixabay.com/photos/x-{i}/",
                image_url=f"https://pixabay.com/get/{i}_640.jpg") for i in ids]


def test_best_cosine_first_and_ties_broken_by_id():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    r = rank(hits(30, 10, 20, 40), vectors, np.array([1, 0], np.float32))
    assert r.ids == [20, 30, 40, 10]
    assert r.scores[0] == r.scores[1] == 1.0


def test_vectors_are_normalised_before_the_cosine():
    r = rank(hits(1, 2), np.array([[10, 0], [0.5, 0.5]], np.float32), np.array([3, 3], np.float32))
    assert r.ids == [2, 1]
    assert abs(r.scores[0] - 1.0) < 1e-6


def test_pages_continue_the_same_ranking_and_survive_json():
    r = rank(hits(*range(1, 13)), np.random.default_rng(0).normal(size=(12, 8)).astype("f4"),
             np.ones(8, np.float32))
    second = r.page(5, 5)
    assert [s.rank for s in second] == [6, 7, 8, 9, 10]
    assert [s.hit.id for s in second] == r.ids[5:10]
    again = Ranking.from_dict(r.to_dict())
    assert again.ids == r.ids and again.scores == r.scores
    assert r.page(12, 5) == []


def test_display_score_is_100_times_cosine_floored_at_zero():
    assert display_score(0.3123) == 31.2
    assert display_score(-0.2) == 0.0

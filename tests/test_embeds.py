"""Pure pieces of the Discord skin: embeds, the summary line, the invite permissions."""

from pathlib import Path

from bot.app import INVITE_PERMISSIONS
from bot.embeds import NUMBERS, hit_embed, number_index, pick_embed, summary_line
from search.models import Hit
from search.ranking import ScoredHit

HIT = Hit(id=123, page_url="https://pixabay.com/photos/tiger-123/",
          image_url="https://pixabay.com/get/abc_640.jpg", tags=("tiger", "snow"), user="Ann")


def test_hit_embed_carries_rank_score_page_image_tags_and_credit():
    e = hit_embed(ScoredHit(3, HIT, 0.3123)).to_dict()
    assert e["title"] == "#3 · score 31.2"
    assert e["url"] == HIT.page_url
    assert e["image"]["url"] == HIT.image_url
    assert e["description"] == "tiger, snow"
    assert e["footer"]["text"] == "Image by Ann on Pixabay"


def test_pick_embed_shows_the_attachment_and_credit():
    e = pick_embed(ScoredHit(1, HIT, 0.5), phrase="tiger in snow", filename="p.jpg").to_dict()
    assert e["image"]["url"] == "attachment://p.jpg" and e["title"] == "tiger in snow"
    assert e["footer"]["text"] == "Image by Ann on Pixabay"


def test_summary_names_candidates_time_page_and_source():
    line = summary_line(tag="tiger", phrase="tiger in snow", candidates=200, seconds=2.04,
                        page=1, pages=40)
    assert "200 candidates" in line and "2.0 s" in line and "page 2/40" in line
    assert "Pixabay" in line and len(line) < 2000


def test_number_emoji_map_to_page_positions():
    assert [number_index(n) for n in NUMBERS] == list(range(10))
    assert number_index("👍") is None


def test_readme_invite_link_asks_for_exactly_the_needed_permissions():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"permissions={INVITE_PERMISSIONS.value}" in readme

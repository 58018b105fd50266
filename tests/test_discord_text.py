"""Discord's limits and markdown escaping: every limit clipped, every untrusted text disarmed."""

import discord
import pytest

from bot.discord_text import clip, embed_chars, escape, fit_embeds, http_url
from bot.embeds import hit_embed, pick_embed, results_embeds, summary_line
from search.models import Hit
from search.ranking import ScoredHit


def hit(**fields) -> ScoredHit:
    base = dict(id=1, page_url="https://pixabay.com/photos/x-1/",
                image_url="https://cdn.pixabay.com/x_640.jpg", tags=("tiger",), user="Ann")
    return ScoredHit(1, Hit(**{**base, **fields}), 0.3)


@pytest.mark.parametrize("attr, limit", [("title", 256), ("description", 4096)])
def test_title_and_description_are_clipped(attr, limit):
    e = fit_embeds([discord.Embed(**{attr: "x" * 10_000})])[0]
    assert len(getattr(e, attr)) == limit and getattr(e, attr).endswith("…")


def test_footer_author_and_fields_are_clipped():
    e = discord.Embed()
    e.set_footer(text="f" * 3000)
    e.set_author(name="a" * 300)
    e.add_field(name="n" * 300, value="v" * 2000)
    (e,) = fit_embeds([e])
    assert len(e.footer.text) == 2048 and len(e.author.name) == 256
    assert len(e.fields[0].name) == 256 and len(e.fields[0].value) == 1024


def test_ten_embeds_at_most_and_6000_characters_together_longest_first():
    embeds = [discord.Embed(title=f"#{i}", description="d" * 700) for i in range(12)]
    embeds[0].description = "short"
    fitted = fit_embeds(embeds)
    assert len(fitted) == 10
    assert sum(embed_chars(e) for e in fitted) <= 6000
    assert fitted[0].description == "short" and [e.title for e in fitted][:2] == ["#0", "#1"]


def test_a_5000_character_tag_and_a_3000_character_user_fit_one_hit():
    e = hit_embed(hit(tags=("t" * 5000,), user="U" * 3000))
    assert len(e.description) <= 4096 and len(e.footer.text) <= 2048


def test_ten_hits_with_700_character_tags_fit_one_message():
    embeds = results_embeds([hit(tags=("t" * 700,)) for _ in range(10)])
    assert len(embeds) == 10 and sum(embed_chars(e) for e in embeds) <= 6000


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", "ftp://x/y",
                                 "https://", "not a url", "https://x/" + "a" * 3000])
def test_links_that_are_not_http_are_dropped(url):
    e = hit_embed(hit(page_url=url, image_url=url))
    assert e.url is None and e.image.url is None
    p = pick_embed(hit(page_url=url), phrase="x", filename=None)
    assert p.url is None and not p.description


def test_a_page_link_with_brackets_cannot_end_the_markdown_link_early():
    p = pick_embed(hit(page_url="https://pixabay.com/a)[x](https://evil.example/"),
                   phrase="x", filename=None)
    assert p.description == ("[View on Pixabay](https://pixabay.com/a%29[x]%28"
                             "https://evil.example/)")


@pytest.mark.parametrize("raw, shown", [
    ("[free nitro](https://evil.example/x)", r"\[free nitro\](https://evil.example/x)"),
    ("**bold** _it_ ~~s~~ ||spoiler|| `code`",
     r"\*\*bold\*\* \_it\_ \~\~s\~\~ \|\|spoiler\|\| \`code\`"),
    ("@everyone and @here", "@\u200beveryone and @\u200bhere"),
    ("<@123> <@&456> <#789> <t:0:R>", r"\<@123\> \<@&456\> \<\#789\> \<t:0:R\>"),
    ("# big\n> quote", r"\# big \> quote"),
    ("-# small", r"\-\# small"),
    (r"back\slash", r"back\\slash"),
])
def test_escape_shows_markdown_as_typed(raw, shown):
    assert escape(raw) == shown


def test_clipping_never_leaves_half_an_escape():
    assert clip(escape("a" * 8 + "*" * 10), 10) == "aaaaaaaa…"


def test_summary_line_escapes_and_fits_2000_characters():
    line = summary_line(tag="ti`ger", phrase="**x** " * 400, candidates=200, seconds=2.0,
                        page=0, pages=40, note="That was the last page.")
    assert len(line) <= 2000
    assert line.startswith(r"**\*\*x\*\* ") and r"tag ti\`ger" in line
    assert line.endswith("That was the last page.")


def test_http_url_accepts_only_absolute_http_links():
    assert http_url("https://pixabay.com/x") == "https://pixabay.com/x"
    assert http_url("http://127.0.0.1:5/x") == "http://127.0.0.1:5/x"
    assert http_url("javascript:alert(1)") is None and http_url(None) is None

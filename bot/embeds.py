"""Results and picks to Discord embeds: pure functions, easy to test."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from search.ranking import ScoredHit

from .discord_text import AUTHOR, CONTENT, DESCRIPTION, TITLE, clip, escape, fit_embeds, http_url

PREV, NEXT = "\N{BLACK LEFT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}", \
    "\N{BLACK RIGHT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}"
NUMBERS = tuple(f"{d}\N{VARIATION SELECTOR-16}\N{COMBINING ENCLOSING KEYCAP}" for d in "123456789"
                ) + ("\N{KEYCAP TEN}",)
PIXABAY_GREEN = 0x2EC66D


def number_index(emoji: str) -> int | None:
    """0 for 1️⃣ … 9 for 🔟; None for any other emoji."""
    try:
        return NUMBERS.index(emoji)
    except ValueError:
        return None


def credit(user: str) -> str:
    """The photographer's credit; a footer shows no markdown, so the name is only clipped."""
    return f"Image by {clip(' '.join(user.split()) or 'unknown', AUTHOR)} on Pixabay"


def hit_embed(item: ScoredHit) -> discord.Embed:
    hit = item.hit
    embed = discord.Embed(title=f"#{item.rank} · score {item.display:.1f}",
                          url=http_url(hit.page_url), colour=PIXABAY_GREEN)
    if (image := http_url(hit.image_url)) is not None:
        embed.set_image(url=image)
    if hit.tags:
        embed.description = clip(", ".join(escape(t) for t in hit.tags), DESCRIPTION)
    embed.set_footer(text=credit(hit.user))
    return embed


def results_embeds(items: Sequence[ScoredHit]) -> list[discord.Embed]:
    """One embed per hit, fitted into what Discord accepts in one message."""
    return fit_embeds([hit_embed(item) for item in items])


def summary_line(*, tag: str, phrase: str, candidates: int, seconds: float, page: int,
                 pages: int, note: str = "") -> str:
    tail = (f" · tag {escape(tag)} · {candidates} candidates ranked in {seconds:.1f} s · "
            f"page {page + 1}/{pages}\n"
            f"-# ◀️ ▶️ more results · 1️⃣… share a pick · images from "
            f"[Pixabay](https://pixabay.com)" + (f"\n{note}" if note else ""))
    # The phrase gives way first: the rest of the line is ours and short.
    room = CONTENT - len(tail) - 4
    return f"**{clip(escape(phrase), room)}**{tail}"


def pick_embed(item: ScoredHit, *, phrase: str, filename: str | None) -> discord.Embed:
    hit = item.hit
    page = http_url(hit.page_url)
    embed = discord.Embed(title=clip(escape(phrase), TITLE), url=page, colour=PIXABAY_GREEN,
                          description=f"[View on Pixabay]({_link_target(page)})" if page else None)
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=credit(hit.user))
    return fit_embeds([embed])[0]


def _link_target(url: str) -> str:
    """A URL safe inside markdown's ``[text](url)``: no bracket can end the link early."""
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def picks_list_embed(lines: Sequence[str], *, title: str) -> discord.Embed:
    return fit_embeds([discord.Embed(title=title, description="\n".join(lines) or "No picks yet.",
                                     colour=PIXABAY_GREEN)])[0]


def provisional_line(*, tag: str, phrase: str, ranked: int, total: int) -> str:
    """The first line of a results message while the ranking is still growing."""
    tail = (f" · tag {escape(tag)} · ranked {ranked} of {total}… · the order may still "
            "change\n-# images from [Pixabay](https://pixabay.com)")
    return f"**{clip(escape(phrase), CONTENT - len(tail) - 4)}**{tail}"

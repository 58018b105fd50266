"""Results and picks to Discord embeds: pure functions, easy to test."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from search.ranking import ScoredHit

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


def hit_embed(item: ScoredHit) -> discord.Embed:
    hit = item.hit
    embed = discord.Embed(title=f"#{item.rank} · score {item.display:.1f}", url=hit.page_url,
                          colour=PIXABAY_GREEN)
    embed.set_image(url=hit.image_url)
    if hit.tags:
        embed.description = ", ".join(hit.tags)
    embed.set_footer(text=f"Image by {hit.user} on Pixabay")
    return embed


def results_embeds(items: Sequence[ScoredHit]) -> list[discord.Embed]:
    return [hit_embed(item) for item in items]


def summary_line(*, tag: str, phrase: str, candidates: int, seconds: float, page: int,
                 pages: int, note: str = "") -> str:
    line = (f"**{phrase}** · tag `{tag}` · {candidates} candidates ranked in {seconds:.1f} s · "
            f"page {page + 1}/{pages}\n"
            f"-# ◀️ ▶️ more results · 1️⃣… share a pick · images from "
            f"[Pixabay](https://pixabay.com)")
    return f"{line}\n{note}" if note else line


def pick_embed(item: ScoredHit, *, phrase: str, filename: str | None) -> discord.Embed:
    hit = item.hit
    embed = discord.Embed(title=phrase[:256], url=hit.page_url, colour=PIXABAY_GREEN,
                          description=f"[View on Pixabay]({hit.page_url})")
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=f"Image by {hit.user} on Pixabay")
    return embed


def picks_list_embed(lines: Sequence[str], *, title: str) -> discord.Embed:
    return discord.Embed(title=title, description="\n".join(lines) or "No picks yet.",
                         colour=PIXABAY_GREEN)


def provisional_line(*, tag: str, phrase: str, ranked: int, total: int) -> str:
    """The first line of a results message while the ranking is still growing."""
    return (f"**{phrase}** · tag `{tag}` · ranked {ranked} of {total}… · the order may still "
            "change\n-# images from [Pixabay](https://pixabay.com)")

"""Results and picks to Discord embeds: pure functions, easy to test."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from search.pixabay import Hit
from search.ranking import ScoredHit
from search.sources import HOMES, credit, display_url, label, licence_label

PREV, NEXT = "\N{BLACK LEFT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}", \
    "\N{BLACK RIGHT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}"
NUMBERS = tuple(f"{d}\N{VARIATION SELECTOR-16}\N{COMBINING ENCLOSING KEYCAP}" for d in "123456789"
                ) + ("\N{KEYCAP TEN}",)
PIXABAY_GREEN = 0x2EC66D
OPENVERSE_BLUE = 0x3C5BD1
MAGNIFIER = "\N{LEFT-POINTING MAGNIFYING GLASS}"  # 🔍 on a pick: more like this


def colour(hit: Hit) -> int:
    return OPENVERSE_BLUE if hit.source == "openverse" else PIXABAY_GREEN


def licence_link(hit: Hit) -> str:
    """``[CC BY 2.0](https://creativecommons.org/…)`` for an Openverse hit, else ''."""
    name = licence_label(hit)
    if not name:
        return ""
    return f"[{name}]({hit.license_url})" if hit.license_url else name


def number_index(emoji: str) -> int | None:
    """0 for 1️⃣ … 9 for 🔟; None for any other emoji."""
    try:
        return NUMBERS.index(emoji)
    except ValueError:
        return None


def hit_embed(item: ScoredHit) -> discord.Embed:
    hit = item.hit
    embed = discord.Embed(title=f"#{item.rank} · score {item.display:.1f}", url=hit.page_url,
                          colour=colour(hit))
    embed.set_image(url=display_url(hit))
    lines = [", ".join(hit.tags)] if hit.tags else []
    if licence_link(hit):
        lines.append(f"Licence: {licence_link(hit)}")
    if lines:
        embed.description = "\n".join(lines)
    embed.set_footer(text=credit(hit))
    return embed


def results_embeds(items: Sequence[ScoredHit]) -> list[discord.Embed]:
    return [hit_embed(item) for item in items]


def summary_line(*, tag: str, phrase: str, candidates: int, seconds: float, page: int,
                 pages: int, note: str = "", source: str = "pixabay", link: str = "") -> str:
    """The results message's first lines; ``link`` makes the bold label a link (more like)."""
    head = f"[**{phrase}**]({link})" if link else f"**{phrase}**"
    line = (f"{head} · tag `{tag}` · {candidates} candidates ranked in {seconds:.1f} s · "
            f"page {page + 1}/{pages}\n"
            f"-# ◀️ ▶️ more results · 1️⃣… share a pick · images from "
            f"[{label(source)}]({HOMES.get(source, HOMES['pixabay'])})")
    return f"{line}\n{note}" if note else line


def grid_embed(items: Sequence[ScoredHit], filename: str, source: str) -> discord.Embed:
    """The contact sheet's embed: the sheet itself, and each tile's page, credit and licence."""
    lines = []
    for n, item in enumerate(items, 1):
        hit = item.hit
        extra = f" · {licence_link(hit)}" if licence_link(hit) else ""
        lines.append(f"**{n}** · #{item.rank} · [{label(hit.source)} page]({hit.page_url}) · "
                     f"{credit(hit).split(' · ')[0]}{extra}")
    embed = discord.Embed(description="\n".join(lines)[:4096],
                          colour=OPENVERSE_BLUE if source == "openverse" else PIXABAY_GREEN)
    embed.set_image(url=f"attachment://{filename}")
    return embed


def pick_embed(item: ScoredHit, *, phrase: str, filename: str | None) -> discord.Embed:
    hit = item.hit
    description = f"[View on {label(hit.source)}]({hit.page_url})"
    if licence_link(hit):
        description += f" · licence {licence_link(hit)}"
    embed = discord.Embed(title=phrase[:256], url=hit.page_url, colour=colour(hit),
                          description=f"{description}\n-# {MAGNIFIER} more like this")
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=credit(hit))
    return embed


def picks_list_embed(lines: Sequence[str], *, title: str) -> discord.Embed:
    return discord.Embed(title=title, description="\n".join(lines) or "No picks yet.",
                         colour=PIXABAY_GREEN)


def picks_embeds(lines: Sequence[str], thumbnails: Sequence[str | None], *, title: str
                 ) -> list[discord.Embed]:
    """One small embed per pick (at most 10), each with the pick's thumbnail."""
    if not lines:
        return [picks_list_embed([], title=title)]
    embeds = []
    for i, (line, thumb) in enumerate(zip(lines[:10], thumbnails, strict=False)):
        embed = discord.Embed(title=title if i == 0 else None, description=line,
                              colour=PIXABAY_GREEN)
        if thumb:
            embed.set_thumbnail(url=thumb)
        embeds.append(embed)
    return embeds

"""Results and picks to Discord embeds: pure functions, easy to test."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from search.models import SOURCES, Hit
from search.ranking import ScoredHit
from search.sources import ADAPTERS, Adapter, credit, display_url, label, licence_label, tile_url

from .discord_text import (
    AUTHOR,
    CONTENT,
    DESCRIPTION,
    FOOTER,
    TITLE,
    clip,
    escape,
    fit_embeds,
    http_url,
)

PREV, NEXT = "\N{BLACK LEFT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}", \
    "\N{BLACK RIGHT-POINTING TRIANGLE}\N{VARIATION SELECTOR-16}"
NUMBERS = tuple(f"{d}\N{VARIATION SELECTOR-16}\N{COMBINING ENCLOSING KEYCAP}" for d in "123456789"
                ) + ("\N{KEYCAP TEN}",)
LISTS_GREEN = 0x2EC66D  # the picks lists, whatever source each pick came from
MAGNIFIER = "\N{LEFT-POINTING MAGNIFYING GLASS}"  # 🔍 on a pick: more like this


def _source(name: str) -> Adapter:
    """The named source's adapter; the default one for a name no longer offered."""
    return ADAPTERS.get(name) or ADAPTERS[SOURCES[0]]


def colour(source: str) -> int:
    return _source(source).colour


def number_index(emoji: str) -> int | None:
    """0 for 1️⃣ … 9 for 🔟; None for any other emoji."""
    try:
        return NUMBERS.index(emoji)
    except ValueError:
        return None


def footer(hit: Hit) -> str:
    """The credit the source asks for; a footer shows no markdown, so it is only clipped."""
    return clip(credit(hit, AUTHOR), FOOTER)


def licence_link(hit: Hit) -> str:
    """``[CC BY 2.0](https://creativecommons.org/…)`` for an Openverse hit, else ''."""
    name = licence_label(hit)
    if not name:
        return ""
    target = http_url(hit.license_url)
    return f"[{escape(name)}]({_link_target(target)})" if target else escape(name)


def hit_embed(item: ScoredHit) -> discord.Embed:
    hit = item.hit
    embed = discord.Embed(title=f"#{item.rank} · score {item.display:.1f}",
                          url=http_url(hit.page_url), colour=colour(hit.source))
    if (image := http_url(display_url(hit))) is not None:
        embed.set_image(url=image)
    lines = [", ".join(escape(t) for t in hit.tags)] if hit.tags else []
    if licence_link(hit):
        lines.append(f"Licence: {licence_link(hit)}")
    if lines:
        # the licence goes last and must survive: the tags give way
        licence = "\n" + lines[-1] if licence_link(hit) else ""
        tags = lines[0] if hit.tags else ""
        embed.description = (clip(tags, DESCRIPTION - len(licence)) + licence).strip("\n")
    embed.set_footer(text=footer(hit))
    return embed


def results_embeds(items: Sequence[ScoredHit]) -> list[discord.Embed]:
    """One embed per hit, fitted into what Discord accepts in one message."""
    return fit_embeds([hit_embed(item) for item in items])


def summary_line(*, tag: str, phrase: str, candidates: int, seconds: float, page: int,
                 pages: int, note: str = "", source: str = "pixabay", link: str = "",
                 folded: int = 0) -> str:
    """The results message's first lines; ``link`` makes the bold label a link (more like).
    ``folded``: near-duplicates left out of the ranking, said in the small line."""
    tail = (f" · tag {escape(tag)} · {candidates} candidates ranked in {seconds:.1f} s · "
            f"page {page + 1}/{pages}\n"
            f"-# ◀️ ▶️ more results · 1️⃣… share a pick · images from "
            f"[{label(source)}]({_source(source).home})"
            + (f" · {folded_note(folded)}" if folded else "")
            + (f"\n{note}" if note else ""))
    target = _link_target(link) if http_url(link) else ""
    # The phrase gives way first: the rest of the line is ours and short.
    room = CONTENT - len(tail) - 4 - (len(target) + 4 if target else 0)
    head = f"**{clip(escape(phrase), room)}**"
    return (f"[{head}]({target})" if target else head) + tail


def folded_note(folded: int) -> str:
    return (f"{folded} near-duplicate{'s' if folded != 1 else ''} folded into "
            "better-ranked images")


def grid_embed(items: Sequence[ScoredHit], filename: str, source: str) -> discord.Embed:
    """The contact sheet's embed: the sheet itself, and each tile's page, credit and licence."""
    lines = []
    for n, item in enumerate(items, 1):
        hit = item.hit
        page = http_url(hit.page_url)
        link = f"[{label(hit.source)} page]({_link_target(page)})" if page else label(hit.source)
        who = escape(clip(" ".join(hit.user.split()) or "unknown", 80))
        extra = f" · {licence_link(hit)}" if licence_link(hit) else ""
        lines.append(f"**{n}** · #{item.rank} · {link} · by {who}{extra}")
    embed = discord.Embed(description="\n".join(lines), colour=colour(source))
    embed.set_image(url=f"attachment://{filename}")
    return fit_embeds([embed])[0]


def pick_embed(item: ScoredHit, *, phrase: str, filename: str | None) -> discord.Embed:
    hit = item.hit
    page = http_url(hit.page_url)
    parts = [f"[View on {label(hit.source)}]({_link_target(page)})"] if page else []
    if licence_link(hit):
        parts.append(f"licence {licence_link(hit)}")
    embed = discord.Embed(title=clip(escape(phrase), TITLE), url=page, colour=colour(hit.source),
                          description=" · ".join(parts) or None)
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=footer(hit))
    return fit_embeds([embed])[0]


def _link_target(url: str) -> str:
    """A URL safe inside markdown's ``[text](url)``: no bracket can end the link early."""
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def picks_list_embed(lines: Sequence[str], *, title: str) -> discord.Embed:
    return fit_embeds([discord.Embed(title=title, description="\n".join(lines) or "No picks yet.",
                                     colour=LISTS_GREEN)])[0]


def picks_embeds(lines: Sequence[str], hits: Sequence[Hit | None], *, title: str
                 ) -> list[discord.Embed]:
    """One small embed per pick (at most 10), each with the pick's thumbnail if known."""
    if not lines:
        return [picks_list_embed([], title=title)]
    embeds = []
    for i, (line, hit) in enumerate(zip(lines[:10], hits, strict=False)):
        embed = discord.Embed(title=title if i == 0 else None, description=line,
                              colour=LISTS_GREEN)
        thumb = tile_url(hit) if hit is not None else None
        if thumb and http_url(thumb):
            embed.set_thumbnail(url=thumb)
        embeds.append(embed)
    return fit_embeds(embeds)


def provisional_line(*, tag: str, phrase: str, ranked: int, total: int,
                     source: str = "pixabay") -> str:
    """The first line of a results message while the ranking is still growing."""
    tail = (f" · tag {escape(tag)} · ranked {ranked} of {total}… · the order may still "
            f"change\n-# images from [{label(source)}]({_source(source).home})")
    return f"**{clip(escape(phrase), CONTENT - len(tail) - 4)}**{tail}"

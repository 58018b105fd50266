"""Discord's text limits and markdown escaping, for every string the bot publishes.

Discord refuses a whole message (400, code 50035) when one embed field is too long,
so every text is clipped to its documented limit here, and a message's embeds are
fitted into the 6000 characters Discord allows across them. Text that a member or
Pixabay supplied is escaped before it is shown, so it reads as typed and cannot
become a masked link, a mention or broken formatting.
https://discord.com/developers/docs/resources/message#embed-object-embed-limits
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import discord
from yarl import URL

CONTENT = 2000
TITLE = 256
DESCRIPTION = 4096
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR = 256
EMBED_TOTAL = 6000  # all embeds of one message together
EMBEDS = 10
URL_CHARS = 2048
ELLIPSIS = "…"

# The characters that make Discord markdown (emphasis, code, spoilers, masked links,
# mentions and timestamps in <>, quotes, headings); a backslash before any ASCII
# punctuation shows it as typed. "-" and "#" matter only at the start of a line.
_MARKDOWN = re.compile(r"([\\*_~`|\[\]<>#])")
_MASS_MENTION = re.compile(r"@(everyone|here)")
_SPACE = re.compile(r"\s+")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, with an ellipsis when it was cut."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    cut = text[:limit - 1]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]  # never leave half of an escape at the end
    return cut + ELLIPSIS


def escape(text: str) -> str:
    """Untrusted text shown literally: markdown, links, mentions and line breaks disarmed."""
    text = _MARKDOWN.sub(r"\\\1", _SPACE.sub(" ", text).strip())
    text = _MASS_MENTION.sub("@\u200b\\1", text)
    return "\\" + text if text.startswith("-") else text


def inline(text: str, limit: int) -> str:
    """Untrusted text escaped, then clipped to ``limit`` characters of the message."""
    return clip(escape(text), limit)


def http_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL with a host that Discord accepts, else None."""
    if not url or len(url) > URL_CHARS:
        return None
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return url


def clip_embed(embed: discord.Embed) -> discord.Embed:
    """Every text of ``embed`` within its own limit, and every URL http(s) or gone."""
    if embed.title:
        embed.title = clip(embed.title, TITLE)
    if embed.description:
        embed.description = clip(embed.description, DESCRIPTION)
    if embed.url is not None and http_url(embed.url) is None:
        embed.url = None
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, FOOTER), icon_url=embed.footer.icon_url)
    if embed.author.name:
        embed.set_author(name=clip(embed.author.name, AUTHOR),
                         url=http_url(embed.author.url), icon_url=embed.author.icon_url)
    for i, f in enumerate(embed.fields):
        embed.set_field_at(i, name=clip(f.name or "", FIELD_NAME),
                           value=clip(f.value or "", FIELD_VALUE), inline=bool(f.inline))
    image = embed.image.url
    if image and not image.startswith("attachment://") and http_url(image) is None:
        embed.set_image(url=None)
    return embed


def embed_chars(embed: discord.Embed) -> int:
    """The characters Discord counts toward a message's 6000."""
    return sum(len(t) for t in _texts(embed))


def _texts(embed: discord.Embed) -> list[str]:
    texts = [embed.title or "", embed.description or "", embed.footer.text or "",
             embed.author.name or ""]
    for f in embed.fields:
        texts += [f.name or "", f.value or ""]
    return texts


def fit_embeds(embeds: Sequence[discord.Embed], total: int = EMBED_TOTAL) -> list[discord.Embed]:
    """At most ten embeds, each within its limits, together within ``total`` characters.

    When they are too long together, the longest texts are shortened first (to one common
    length), so a single hostile hit cannot crowd out the others.
    """
    kept = [clip_embed(e) for e in list(embeds)[:EMBEDS]]
    lengths = [len(t) for e in kept for t in _texts(e)]
    if sum(lengths) <= total:
        return kept
    cap = _water_level(lengths, total)
    for e in kept:
        if e.title and len(e.title) > cap:
            e.title = clip(e.title, cap)
        if e.description and len(e.description) > cap:
            e.description = clip(e.description, cap)
        if e.footer.text and len(e.footer.text) > cap:
            e.set_footer(text=clip(e.footer.text, cap), icon_url=e.footer.icon_url)
        if e.author.name and len(e.author.name) > cap:
            e.set_author(name=clip(e.author.name, cap), url=e.author.url,
                         icon_url=e.author.icon_url)
        for i, f in enumerate(e.fields):
            e.set_field_at(i, name=clip(f.name or "", cap), value=clip(f.value or "", cap),
                           inline=bool(f.inline))
    return kept


def _water_level(lengths: list[int], total: int) -> int:
    """The largest cap with sum(min(n, cap)) <= total."""
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= total:
            lo = mid
        else:
            hi = mid - 1
    return lo

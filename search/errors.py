"""Typed errors. ``str(error)`` is the one sentence a user sees, in Discord or on stderr."""

from __future__ import annotations

import math


class SearchError(Exception):
    """Base of every error that the engine raises on purpose."""


class ConfigError(SearchError):
    """A setting is missing or invalid; the sentence names the variable and what is allowed."""


class DataDirError(ConfigError):
    """DATA_DIR, or a database in it, cannot be used; the sentence names the folder and why."""


class InvalidQuery(SearchError):
    """The tag or the phrase cannot be searched (empty, too long)."""


class SourceError(SearchError):
    """An image source (Pixabay, Openverse) refused or failed the search."""


class PixabayError(SourceError):
    """Pixabay refused or failed the search."""


class InvalidApiKey(PixabayError):
    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__("Pixabay rejected the API key; check PIXABAY_API_KEY.")


class PixabayRejected(PixabayError):
    """A 4xx other than the key. ``detail`` is Pixabay's text with the key redacted, for
    the log only: it may echo the request, so users get our own sentence."""

    def __init__(self, detail: str, status: int = 400) -> None:
        self.detail = detail
        self.status = status
        super().__init__(f"Pixabay refused the search (HTTP {status}); try another tag or "
                         "filters, or ask the admins to read the log.")


class RateLimited(SourceError):
    """``cap``: the longest wait believed (Pixabay's window is a minute; Openverse's
    anonymous day budget can need hours)."""

    def __init__(self, retry_after: float, source: str = "Pixabay", cap: float = 60.0) -> None:
        wait = float(retry_after)
        self.retry_after = min(max(1.0, wait), cap) if math.isfinite(wait) else cap
        self.source = source
        super().__init__(
            f"{source}'s rate limit is reached; try again in {int(self.retry_after + 0.999)} s."
        )


class PixabayUnavailable(PixabayError):
    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(f"Pixabay is not answering right now ({why}); try again in a minute.")


class PixabayUnreachable(PixabayUnavailable):
    """No connection at all: the sentence names the URL and the setting, never the key."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        PixabayError.__init__(self, f"Cannot reach Pixabay at {url} ({why}); check the network "
                              "or PIXABAY_API_URL.")
        self.why = why


class MalformedResponse(SourceError):
    def __init__(self, source: str = "Pixabay") -> None:
        super().__init__(f"{source} sent a response that could not be read; try again in a "
                         "minute.")


class OpenverseError(SourceError):
    """Openverse refused or failed the search."""


class OpenverseRejected(OpenverseError):
    """A 4xx; ``detail`` is Openverse's own text, for the log only."""

    def __init__(self, detail: str, status: int = 400) -> None:
        self.detail = detail
        self.status = status
        super().__init__(f"Openverse refused the search (HTTP {status}); try another tag or "
                         "filters, or ask the admins to read the log.")


class InvalidOpenverseCredentials(OpenverseError):
    def __init__(self) -> None:
        super().__init__("Openverse rejected the client credentials; check OPENVERSE_CLIENT_ID "
                         "and OPENVERSE_CLIENT_SECRET.")


class OpenverseUnavailable(OpenverseError):
    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(f"Openverse is not answering right now ({why}); try again in a minute.")


class OpenverseUnreachable(OpenverseUnavailable):
    """No connection at all: the sentence names the URL and the setting."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        OpenverseError.__init__(self, f"Cannot reach Openverse at {url} ({why}); check the "
                                "network or OPENVERSE_API_URL.")
        self.why = why


class NoResults(SearchError):
    def __init__(self, tag: str, source: str = "Pixabay") -> None:
        self.tag = tag
        self.source = source
        super().__init__(f"{source} has no images tagged '{tag}'; try a broader tag.")


class AllImagesFailed(SearchError):
    def __init__(self, count: int, reasons: dict[str, int]) -> None:
        self.count = count
        self.reasons = dict(reasons)
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        super().__init__(f"None of the {count} images could be downloaded or read ({why}).")


class PickForgotten(SearchError):
    """"More like this" on a pick whose ranking or cached vectors are gone (pruned, or a
    new model)."""

    def __init__(self) -> None:
        super().__init__("I no longer have the images behind that pick; run the search again "
                         "to find more like it.")


class ImageSkipped(SearchError):
    """One image was skipped; ``reason`` is a short label used in counts and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"skipped: {reason}" + (f" ({detail})" if detail else ""))


class ModelLoadError(SearchError):
    """The CLIP model could not be loaded."""


class LanguageUnsupported(InvalidQuery):
    """A language asked for a source without one."""

    def __init__(self, source: str = "Openverse") -> None:
        super().__init__(f"{source} has no language parameter: its tags are searched as typed; "
                         "leave lang out, or choose source Pixabay.")


class ModelHubUnreachable(ModelLoadError):
    """The weights are not cached and the hub does not answer: the network may come back,
    so a service restarts later instead of stopping for good."""

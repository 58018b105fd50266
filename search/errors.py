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


class PixabayError(SearchError):
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


class RateLimited(PixabayError):
    def __init__(self, retry_after: float) -> None:
        wait = float(retry_after)
        self.retry_after = min(max(1.0, wait), 60.0) if math.isfinite(wait) else 60.0
        super().__init__(
            f"Pixabay's rate limit is reached; try again in {int(self.retry_after + 0.999)} s."
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


class MalformedResponse(PixabayError):
    def __init__(self) -> None:
        super().__init__("Pixabay sent a response that could not be read; try again in a minute.")


class NoResults(SearchError):
    def __init__(self, tag: str) -> None:
        self.tag = tag
        super().__init__(f"Pixabay has no images tagged '{tag}'; try a broader tag.")


class AllImagesFailed(SearchError):
    def __init__(self, count: int, reasons: dict[str, int]) -> None:
        self.count = count
        self.reasons = dict(reasons)
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        super().__init__(f"None of the {count} images could be downloaded or read ({why}).")


class ImageSkipped(SearchError):
    """One image was skipped; ``reason`` is a short label used in counts and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"skipped: {reason}" + (f" ({detail})" if detail else ""))


class ModelLoadError(SearchError):
    """The CLIP model could not be loaded."""

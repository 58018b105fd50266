"""Pure data: a search request (Query, Filters) with its limits, what a source returns
(Hit, Candidates), and where results come from (Source).

Every limit a member or a CLI user can meet lives here once; the CLI's arguments, the
service's checks and the bot's slash-command options are all built from these names.
No source owns these shapes: each adapter in ``search.sources`` fills them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidQuery

MAX_TAG_CHARS = 100  # Pixabay's limit on q, kept for every source: one rule for members
MAX_PHRASE_CHARS = 300
MAX_CANDIDATES = 500  # Pixabay returns at most 500 hits per query
MAX_TOP = 50
MAX_QUERY_IMAGE_BYTES = 10 * 1024 * 1024  # a query picture; Discord's own cap for bot uploads
# The registry of sources, the default first: each name is a module of search/sources/
# holding its adapter (search.sources.ADAPTERS imports them). A new source is its module
# and one line here.
SOURCES = (
    "pixabay",
    "openverse",
)

FeatureVector = NDArray[np.float32]  # one image's or phrase's unit vector

IMAGE_TYPES = ("all", "photo", "illustration", "vector")
ORIENTATIONS = ("all", "horizontal", "vertical")
CATEGORIES = ("backgrounds", "fashion", "nature", "science", "education", "feelings", "health",
              "people", "religion", "places", "animals", "industry", "computer", "food",
              "sports", "transportation", "travel", "buildings", "business", "music")
COLORS = ("grayscale", "transparent", "red", "orange", "yellow", "green", "turquoise", "blue",
          "lilac", "pink", "white", "gray", "black", "brown")
ORDERS = ("popular", "latest")
LANGS = ("cs", "da", "de", "en", "es", "fr", "id", "it", "hu", "nl", "no", "pl", "pt", "ro",
         "sk", "fi", "sv", "tr", "vi", "th", "bg", "ru", "el", "ja", "ko", "zh")


def normalise_tag(tag: str) -> str:
    """The form a tag is sent and cached in: lower case, whitespace collapsed."""
    return " ".join(tag.lower().split())


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidQuery(f"{name} must be one of {', '.join(allowed)}, not '{value}'.")


def check_tag(tag: str) -> str:
    """The tag with its whitespace collapsed, or InvalidQuery with the one sentence."""
    tag = " ".join(str(tag).split())
    if not tag:
        raise InvalidQuery("The tag is empty; give one word such as 'tiger'.")
    if len(tag) > MAX_TAG_CHARS:
        raise InvalidQuery(f"The tag is {len(tag)} characters; use one of at most "
                           f"{MAX_TAG_CHARS}.")
    return tag


def check_phrase(phrase: str) -> str:
    phrase = " ".join(str(phrase).split())
    if not phrase:
        raise InvalidQuery("The phrase is empty; describe the picture you want, "
                           "such as 'tiger playing in the snow'.")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise InvalidQuery(f"The phrase is {len(phrase)} characters; keep it under "
                           f"{MAX_PHRASE_CHARS}.")
    return phrase


def check_negatives(phrase: str, *, by_image: bool = False) -> None:
    """A phrase needs something to look for besides what to avoid (an image counts)."""
    from .phrase import MAX_NEGATIVES, split_negatives

    positive, negatives = split_negatives(phrase)
    if negatives and not positive and not by_image:
        shown = " ".join(f"-{t}" for t in negatives)
        raise InvalidQuery(f"Your phrase has only negative terms ({shown}); say what the "
                           "picture should show too, e.g. \"a red circle -snow\".")
    if len(negatives) > MAX_NEGATIVES:
        raise InvalidQuery(f"Your phrase has {len(negatives)} negative terms; use at most "
                           f"{MAX_NEGATIVES}.")


def check_candidates(candidates: int) -> int:
    if isinstance(candidates, bool) or not isinstance(candidates, int) \
            or not 1 <= candidates <= MAX_CANDIDATES:
        raise InvalidQuery(f"candidates must be from 1 to {MAX_CANDIDATES}; Pixabay serves at "
                           f"most {MAX_CANDIDATES}.")
    return candidates


@dataclass(frozen=True)
class Filters:
    """Pixabay's documented filters, typed and checked before any call."""

    image_type: str = "all"
    orientation: str = "all"
    category: str | None = None
    colors: tuple[str, ...] = ()
    min_width: int = 0
    min_height: int = 0
    editors_choice: bool = False
    order: str = "popular"
    lang: str = "en"
    safesearch: bool = True

    def __post_init__(self) -> None:
        _choice("image_type", self.image_type, IMAGE_TYPES)
        _choice("orientation", self.orientation, ORIENTATIONS)
        if self.category is not None:
            _choice("category", self.category, CATEGORIES)
        for colour in self.colors:
            _choice("colors", colour, COLORS)
        _choice("order", self.order, ORDERS)
        _choice("lang", self.lang, LANGS)
        for name in ("min_width", "min_height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 100_000:
                raise InvalidQuery(f"{name} must be a whole number of pixels from 0 to 100000.")

    def params(self) -> dict[str, str]:
        p = {
            "image_type": self.image_type,
            "orientation": self.orientation,
            "min_width": str(self.min_width),
            "min_height": str(self.min_height),
            "editors_choice": "true" if self.editors_choice else "false",
            "order": self.order,
            "lang": self.lang,
            "safesearch": "true" if self.safesearch else "false",
        }
        if self.category:
            p["category"] = self.category
        if self.colors:
            p["colors"] = ",".join(sorted(set(self.colors)))
        return p

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colors"] = list(self.colors)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Filters:
        d = dict(d)
        d["colors"] = tuple(d.get("colors") or ())
        return cls(**d)


@dataclass(frozen=True)
class Query:
    """One search request, checked once at the edge (CLI, cog) and trusted inside.

    ``source`` names the catalogue the candidates come from (pixabay or openverse).
    ``image``: a picture's bytes to rank by; with it the phrase may be empty.
    """

    tag: str
    phrase: str | None
    candidates: int = 200
    filters: Filters = field(default_factory=Filters)
    source: str = "pixabay"
    image: bytes | None = field(default=None, repr=False, compare=False)
    # A picture's vector the caches already hold (one of our results): no image to decode.
    vector: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", check_tag(self.tag))
        pictured = self.image is not None or self.vector is not None
        if not pictured or " ".join(str(self.phrase or "").split()):
            object.__setattr__(self, "phrase", check_phrase(self.phrase or ""))
        else:
            object.__setattr__(self, "phrase", "")
        check_negatives(self.phrase or "", by_image=pictured)
        check_candidates(self.candidates)
        _choice("source", self.source, SOURCES)
        if self.image is not None and len(self.image) > MAX_QUERY_IMAGE_BYTES:
            raise InvalidQuery(f"The image is {len(self.image) / 1e6:.1f} MB; attach one of at "
                               f"most {MAX_QUERY_IMAGE_BYTES // (1024 * 1024)} MB.")


@dataclass(frozen=True)
class Source:
    """Where responses and image ids come from: a catalogue name and its API endpoint.

    Cached responses are keyed by ``response_scope`` (endpoint and a fingerprint of the
    key, never the key); cached vectors by ``id`` (ids from two catalogues never meet).
    """

    name: str
    endpoint: str
    key_fingerprint: str = ""

    @property
    def id(self) -> str:
        return f"{self.name} {self.endpoint}"

    @property
    def response_scope(self) -> str:
        return f"{self.id} key:{self.key_fingerprint}"


def key_fingerprint(key: str) -> str:
    """A short one-way digest of an API key: tells keys apart without storing one."""
    return hashlib.sha256(b"findimage-key\0" + key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Hit:
    """One image from a source, with only the fields we use; unknown fields are dropped.

    Pixabay ids are numbers; Openverse ids are UUID strings. ``source`` keeps them apart,
    and names the adapter (``search.sources``) that says what the URLs and the licence
    fields mean for it.
    """

    id: int | str
    page_url: str
    image_url: str
    preview_url: str = ""
    large_url: str = ""
    tags: tuple[str, ...] = ()
    user: str = "unknown"
    user_id: int = 0
    width: int = 0
    height: int = 0
    image_size: int = 0
    source: str = SOURCES[0]  # rows saved before there were two sources are Pixabay's
    title: str = ""
    license: str = ""
    license_version: str = ""
    license_url: str = ""
    provider: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Hit:
        d = dict(d)
        d["tags"] = tuple(d.get("tags") or ())
        return cls(**d)


@dataclass
class Candidates:
    """What a source returned for a tag: its hits, and what it cost."""

    hits: list[Hit]
    total_hits: int
    requests: int = 0  # API requests actually sent for this call
    from_cache: bool = False

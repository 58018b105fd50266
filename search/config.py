"""One frozen Settings object, read from the environment and then `.env`.

Nothing else in the project reads ``os.environ``. A value in the environment wins
over the same name in `.env`. Every invalid value becomes a ``ConfigError`` whose
sentence names the variable and what is allowed.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from yarl import URL

from .errors import ConfigError
from .models import LANGS, MAX_CANDIDATES, SOURCES

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
IMAGE_VARIANTS = (180, 340, 640, 960)
DEVICES = ("auto", "cpu", "cuda")
LAYOUTS = ("auto", "list", "grid")
CLIP_BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")
CLIP_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "int8")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Names that are ours whatever follows; anything else unknown is ours only when it is a
# near miss of a setting's name (the environment holds many other programs' names).
OUR_PREFIXES = ("DISCORD_", "PIXABAY_", "CLIP_", "OPENVERSE_", "SEARCH_", "RESULTS_")

log = logging.getLogger(__name__)
_warned: set[str] = set()  # each unknown name is warned about once a process


@dataclass(frozen=True)
class Settings:
    discord_token: str | None = field(default=None, repr=False)
    discord_guild_id: int | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    pixabay_api_key: str | None = field(default=None, repr=False)
    pixabay_api_url: str = "https://pixabay.com/api/"
    pixabay_rate_limit: int = 100
    image_hosts: tuple[str, ...] = ("pixabay.com", "cdn.pixabay.com")
    image_variant: int = 340
    clip_model: str = DEFAULT_MODEL
    clip_pretrained: str | None = DEFAULT_PRETRAINED
    clip_device: str = "auto"
    clip_backend: str = "auto"
    clip_precision: str = "auto"
    data_dir: Path = Path("./data")
    model_cache_dir: Path | None = None  # None: DATA_DIR/models
    search_candidates: int = 200
    max_concurrent_searches: int = 4
    user_cooldown_seconds: float = 10.0
    results_keep_days: int = 30
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    search_deadline_seconds: float = 30.0
    search_source: str = "pixabay"
    openverse_api_url: str = "https://api.openverse.org/v1/"
    openverse_client_id: str | None = field(default=None, repr=False)
    openverse_client_secret: str | None = field(default=None, repr=False)
    results_layout: str = "auto"
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    redis_key_prefix: str = "findimage:"
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    process_count: int | None = None  # None: SHARD_COUNT / len(SHARD_IDS), else 1
    discord_cdn_hosts: tuple[str, ...] = ("cdn.discordapp.com", "media.discordapp.net")
    search_language: str = "en"
    # python -m bench.similarity on the tests' 1440 photos and the tiny model: no pair of
    # distinct photos of one scene reaches 0.9995 (the closest is 0.9994, 0.1 % pass 0.999),
    # while 84-98 % of the same photo re-encoded or resized do (docs/results.md).
    dedupe_similarity: float = 0.9995
    database_url: str | None = field(default=None, repr=False)  # may carry a password
    database_pool_size: int = 5
    database_max_overflow: int = 5
    inference_url: str | None = None  # None: the encoder runs in this process
    serve_host: str = "127.0.0.1"
    serve_port: int = 8700
    serve_replicas: int = 1

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
             ) -> Settings:
        """Read settings: ``environ`` (default ``os.environ``) first, then ``env_file``."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update(read_env_file(Path(env_file)))
            warn_unknown(values, f"in {env_file}")
        environ = os.environ if environ is None else environ
        warn_unknown(environ, "in the environment")
        values.update(environ)
        return cls.from_mapping(values)

    @classmethod
    def for_entry_point(cls, env_file: str | Path | None) -> Settings:
        """The environment, then ``--env-file PATH`` (which must be readable) or ./.env."""
        if env_file is not None:
            path = Path(env_file)
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigError(f"--env-file {path} is not a readable file; give the path "
                                  "of a file of NAME=value lines.")
            return cls.load(env_file=path)
        return cls.load()

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        kw: dict[str, object] = {}
        kw["discord_token"] = get("DISCORD_TOKEN")
        kw["pixabay_api_key"] = get("PIXABAY_API_KEY")
        if (raw := get("DISCORD_GUILD_ID")) is not None:
            if not raw.isdigit():
                raise ConfigError(f"DISCORD_GUILD_ID must be a numeric server id, not '{raw}'.")
            kw["discord_guild_id"] = int(raw)
        if (raw := get("DISCORD_API_BASE")) is not None:
            kw["discord_api_base"] = _url("DISCORD_API_BASE", raw, ("http", "https")).rstrip("/")
        if (raw := get("DISCORD_GATEWAY_URL")) is not None:
            kw["discord_gateway_url"] = _url("DISCORD_GATEWAY_URL", raw, ("ws", "wss"))
        if (raw := get("PIXABAY_API_URL")) is not None:
            kw["pixabay_api_url"] = _url("PIXABAY_API_URL", raw, ("http", "https"))
        if (raw := get("PIXABAY_RATE_LIMIT")) is not None:
            kw["pixabay_rate_limit"] = _int("PIXABAY_RATE_LIMIT", raw, 1, 100)
        if (raw := get("IMAGE_HOSTS")) is not None:
            kw["image_hosts"] = _hosts(raw)
        if (raw := get("IMAGE_VARIANT")) is not None:
            if not raw.isdigit() or int(raw) not in IMAGE_VARIANTS:
                allowed = ", ".join(map(str, IMAGE_VARIANTS))
                raise ConfigError(f"IMAGE_VARIANT must be one of {allowed}, not '{raw}'.")
            kw["image_variant"] = int(raw)
        if (raw := get("CLIP_DEVICE")) is not None:
            if raw not in DEVICES and not (raw.startswith("cuda:") and raw[5:].isdigit()):
                raise ConfigError(f"CLIP_DEVICE must be auto, cpu, cuda or cuda:N, not '{raw}'.")
            kw["clip_device"] = raw
        for name, choices in (("CLIP_BACKEND", CLIP_BACKENDS),
                              ("CLIP_PRECISION", CLIP_PRECISIONS)):
            if (raw := get(name)) is not None:
                if raw.lower() not in choices:
                    raise ConfigError(f"{name} must be one of {', '.join(choices)}, not '{raw}'.")
                kw[name.lower()] = raw.lower()
        if kw.get("clip_backend") == "torch" and kw.get("clip_precision") == "int8":
            raise ConfigError("CLIP_PRECISION=int8 runs on ONNX Runtime; set CLIP_BACKEND to "
                              "auto or onnx, or CLIP_PRECISION to fp32.")
        model = get("CLIP_MODEL")
        pretrained = get("CLIP_PRETRAINED")
        if model is not None:
            kw["clip_model"] = model
            kw["clip_pretrained"] = pretrained
        elif pretrained is not None:
            kw["clip_pretrained"] = pretrained
        if (raw := get("DATA_DIR")) is not None:
            kw["data_dir"] = Path(raw)
        if (raw := get("MODEL_CACHE_DIR")) is not None:
            kw["model_cache_dir"] = Path(raw)
        if (raw := get("SEARCH_CANDIDATES")) is not None:
            kw["search_candidates"] = _int("SEARCH_CANDIDATES", raw, 1, MAX_CANDIDATES)
        if (raw := get("MAX_CONCURRENT_SEARCHES")) is not None:
            kw["max_concurrent_searches"] = _int("MAX_CONCURRENT_SEARCHES", raw, 1, 64)
        if (raw := get("USER_COOLDOWN_SECONDS")) is not None:
            kw["user_cooldown_seconds"] = float(_int("USER_COOLDOWN_SECONDS", raw, 0, 3600))
        if (raw := get("RESULTS_KEEP_DAYS")) is not None:
            kw["results_keep_days"] = _int("RESULTS_KEEP_DAYS", raw, 1, 3650)
        if (raw := get("LOG_LEVEL")) is not None:
            kw["log_level"] = _choice("LOG_LEVEL", raw.upper(), LOG_LEVELS)
        if (raw := get("LOG_FORMAT")) is not None:
            kw["log_format"] = _choice("LOG_FORMAT", raw.lower(), LOG_FORMATS)
        if (raw := get("METRICS_PORT")) is not None:
            kw["metrics_port"] = _int("METRICS_PORT", raw, 0, 65535)
        if (raw := get("METRICS_HOST")) is not None:
            if any(c in raw for c in "/ @?#"):
                raise ConfigError(f"METRICS_HOST must be an address such as 127.0.0.1, "
                                  f"not '{raw}'.")
            kw["metrics_host"] = raw
        if (raw := get("SEARCH_DEADLINE_SECONDS")) is not None:
            kw["search_deadline_seconds"] = float(_int("SEARCH_DEADLINE_SECONDS", raw, 1, 600))
        if (raw := get("SEARCH_SOURCE")) is not None:
            if raw.lower() not in SOURCES:
                raise ConfigError(f"SEARCH_SOURCE must be pixabay or openverse, not '{raw}'.")
            kw["search_source"] = raw.lower()
        if (raw := get("OPENVERSE_API_URL")) is not None:
            url = _url("OPENVERSE_API_URL", raw, ("http", "https"))
            kw["openverse_api_url"] = url if url.endswith("/") else url + "/"
        kw["openverse_client_id"] = get("OPENVERSE_CLIENT_ID")
        kw["openverse_client_secret"] = get("OPENVERSE_CLIENT_SECRET")
        if bool(kw["openverse_client_id"]) != bool(kw["openverse_client_secret"]):
            raise ConfigError("OPENVERSE_CLIENT_ID and OPENVERSE_CLIENT_SECRET go together; "
                              "set both, or neither to search Openverse anonymously.")
        if (raw := get("RESULTS_LAYOUT")) is not None:
            if raw.lower() not in LAYOUTS:
                raise ConfigError(f"RESULTS_LAYOUT must be auto, list or grid, not '{raw}'.")
            kw["results_layout"] = raw.lower()
        _scaling(get, kw)
        if (raw := get("DISCORD_CDN_HOSTS")) is not None:
            kw["discord_cdn_hosts"] = _hosts(raw, "DISCORD_CDN_HOSTS", "cdn.discordapp.com")
        if (raw := get("SEARCH_LANGUAGE")) is not None:
            kw["search_language"] = _choice("SEARCH_LANGUAGE", raw.lower(), LANGS)
        if (raw := get("DEDUPE_SIMILARITY")) is not None:
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0.5 <= value <= 1.0:
                raise ConfigError("DEDUPE_SIMILARITY must be a cosine from 0.5 to 1 (1: fold "
                                  f"only identical images), not '{raw}'.")
            kw["dedupe_similarity"] = value
        if (raw := get("DATABASE_URL")) is not None:
            kw["database_url"] = _database_url(raw)
        if (raw := get("DATABASE_POOL_SIZE")) is not None:
            kw["database_pool_size"] = _int("DATABASE_POOL_SIZE", raw, 1, 100)
        if (raw := get("DATABASE_MAX_OVERFLOW")) is not None:
            kw["database_max_overflow"] = _int("DATABASE_MAX_OVERFLOW", raw, 0, 100)
        if (raw := get("INFERENCE_URL")) is not None:
            kw["inference_url"] = _url("INFERENCE_URL", raw, ("http", "https")).rstrip("/")
        if (raw := get("SERVE_HOST")) is not None:
            if any(c in raw for c in "/ @?#"):
                raise ConfigError(f"SERVE_HOST must be an address such as 127.0.0.1, "
                                  f"not '{raw}'.")
            kw["serve_host"] = raw
        if (raw := get("SERVE_PORT")) is not None:
            kw["serve_port"] = _int("SERVE_PORT", raw, 1, 65535)
        if (raw := get("SERVE_REPLICAS")) is not None:
            kw["serve_replicas"] = _int("SERVE_REPLICAS", raw, 1, 64)
        settings = cls(**kw)  # type: ignore[arg-type]
        settings.check_model_reference()
        return settings

    def replace(self, **changes: object) -> Settings:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return type(self)(**data)

    def check_model_reference(self) -> bool:
        """Check CLIP_MODEL's form without importing torch; True if nothing is left to check.

        A zoo name needs open_clip's list, which imports torch (seconds): ``check_model``
        does that just before the model loads, after every cheaper check has passed.
        """
        model = self.clip_model
        if model.startswith("local-dir:"):
            path = Path(model[len("local-dir:"):])
            if not (path / "open_clip_config.json").is_file():
                raise ConfigError(
                    f"CLIP_MODEL points at '{path}', which has no open_clip_config.json; "
                    "use a folder saved by open_clip."
                )
            return True
        if model.startswith("hf-hub:"):
            repo = model[len("hf-hub:"):]
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ConfigError(f"CLIP_MODEL must be hf-hub:org/repo, not '{model}'.")
            return True
        return False

    def check_model(self) -> None:
        """Check CLIP_MODEL / CLIP_PRETRAINED without loading any weights (imports open_clip)."""
        if self.check_model_reference():
            return
        model, pretrained = self.clip_model, self.clip_pretrained
        import open_clip  # deferred: importing torch is slow and only needed here

        if model not in open_clip.list_models():
            raise ConfigError(
                f"CLIP_MODEL '{model}' is not an open_clip model; use a name from "
                "open_clip.list_models(), hf-hub:org/repo or local-dir:/path."
            )
        if pretrained is None:
            raise ConfigError(f"CLIP_PRETRAINED must be set for CLIP_MODEL '{model}'.")
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags and not Path(pretrained).is_file():
            allowed = ", ".join(tags) or "a weights file"
            raise ConfigError(
                f"CLIP_PRETRAINED '{pretrained}' does not fit CLIP_MODEL '{model}'; "
                f"use one of: {allowed}, or a weights file."
            )

    def require(self, *names: str) -> None:
        """Raise ConfigError for the first of ``names`` (env names) that is unset."""
        for name in names:
            if not getattr(self, name.lower()):
                raise ConfigError(
                    f"{name} is not set; put it in the environment or in .env "
                    "(see .env.example)."
                )

    @property
    def openverse_host(self) -> str:
        return (URL(self.openverse_api_url).host or "").lower()

    @property
    def processes(self) -> int:
        """How many processes share the source keys: each one's budget share without Redis."""
        if self.process_count is not None:
            return self.process_count
        if self.shard_count and self.shard_ids:
            return max(1, -(-self.shard_count // len(self.shard_ids)))
        return 1

    @property
    def redis_shown(self) -> str:
        """REDIS_URL without its password, for logs and sentences."""
        if not self.redis_url:
            return ""
        return str(URL(self.redis_url).with_password(None).with_user(None))

    @property
    def models_dir(self) -> Path:
        """Where the exported ONNX files live: MODEL_CACHE_DIR, or DATA_DIR/models."""
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "search.sqlite3"

    @property
    def cache_target(self) -> Path | str:
        """Where the response and embedding caches live: DATABASE_URL, else DATA_DIR."""
        return self.database_url or self.db_path

    @property
    def state_target(self) -> Path | str:
        """Where the bot's state lives: DATABASE_URL, else DATA_DIR/bot.sqlite3."""
        return self.database_url or self.data_dir / "bot.sqlite3"

    @property
    def database_pool(self) -> dict[str, int]:
        """The connection bounds for each database object (Store, State)."""
        return {"pool_size": self.database_pool_size,
                "max_overflow": self.database_max_overflow}


SYSTEMD_NOTIFY = "NOTIFY_SOCKET"  # set by systemd for Type=notify; not one of our settings


def notify_socket(environ: Mapping[str, str] | None = None) -> str | None:
    """Where to tell systemd how start-up goes; None outside a ``Type=notify`` service."""
    return (os.environ if environ is None else environ).get(SYSTEMD_NOTIFY) or None


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines, as python-dotenv reads them; a line it cannot read is a ConfigError
    naming the file and the line (dotenv would skip it, and the setting on it with it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"The env file {path} cannot be read ({why}).") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # the line itself is not echoed: it may hold a secret
            raise ConfigError(f"The env file {path}, line {binding.original.line}, is not "
                              "NAME=value; fix it or remove it (# starts a comment).")
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def setting_names() -> frozenset[str]:
    return frozenset(f.name.upper() for f in fields(Settings))


def warn_unknown(env: Mapping[str, str], where: str) -> None:
    """Warn once for each name that looks like one of ours but is not, naming the nearest."""
    known = setting_names()
    for name in env:
        if name in known or name in _warned:
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if not near and not name.startswith(OUR_PREFIXES):
            continue
        _warned.add(name)
        hint = (f"did you mean {near[0]}?" if near
                else "python -m bot --help lists the settings.")
        log.warning("%s (%s) is not a setting /findimage reads, so it is ignored; %s",
                    name, where, hint)


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in schemes or not url.host:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{name} must be a URL starting with {allowed} and a host, not '{raw}'.")
    return raw


def _database_url(raw: str) -> str:
    """postgresql://user[:password]@host[:port]/database; the sentence never shows a password."""
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("postgresql", "postgres") or not url.path.strip("/"):
        # user:password before the @ is never echoed
        shown = raw if "@" not in raw else raw.split("://", 1)[0] + "://…@" + raw.rsplit("@", 1)[1]
        raise ConfigError("DATABASE_URL must look like postgresql://user@host:5432/database "
                          f"(leave it empty for SQLite in DATA_DIR), not '{shown}'.")
    return raw


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a whole number from {lo} to {hi}, not '{raw}'.")
    return value


def _choice(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not '{raw}'.")
    return raw


def _hosts(raw: str, name: str = "IMAGE_HOSTS", example: str = "cdn.pixabay.com"
           ) -> tuple[str, ...]:
    """Host names, each optionally ``:port`` (then only that port is allowed)."""
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        bare, sep, port = host.rpartition(":")
        if sep and port.isdigit() and host not in LOOPBACK_HOSTS:
            bare = bare.strip("[]") if bare.startswith("[") else bare
        else:
            bare = host
        if any(c in bare for c in "/ @?#") or (":" in bare and bare not in LOOPBACK_HOSTS
                                                and bare != "::1"):
            raise ConfigError(
                f"{name} must be a comma list of host names such as {example}, "
                f"not '{host}'."
            )
    if not hosts:
        raise ConfigError(f"{name} must name at least one host, such as {example}.")
    return hosts


REDIS_SCHEMES = ("redis", "rediss")
MAX_SHARDS = 65536


def _shard_ids(raw: str) -> tuple[int, ...]:
    """``0,1`` or ``4-7`` (a range, as a systemd instance name can carry it) or both."""
    ids: list[int] = []
    for part in (p.strip() for p in raw.split(",")):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)) \
                or len(part) > 11:
            raise ConfigError(f"SHARD_IDS must be a comma list of shard numbers or ranges "
                              f"such as 0,1 or 4-7, not '{raw}'.")
        ids += range(int(lo), int(hi) + 1) if dash else [int(lo)]
        if len(ids) > MAX_SHARDS:
            break
    return tuple(ids)


def _scaling(get, kw: dict[str, object]) -> None:
    """REDIS_URL, REDIS_KEY_PREFIX, SHARD_COUNT, SHARD_IDS and PROCESS_COUNT."""
    if (raw := get("REDIS_URL")) is not None:
        try:
            url = URL(raw)
        except (ValueError, TypeError):
            url = None
        path = url.path.strip("/") if url is not None else ""
        if (url is None or url.scheme not in REDIS_SCHEMES or not url.host
                or (path and not (path.isdigit() and int(path) <= 15))):
            shown = raw if url is None else str(url.with_password(None))
            raise ConfigError(f"REDIS_URL must look like redis://host:6379/0 (database 0-15), "
                              f"not '{shown}'.")
        kw["redis_url"] = raw
    if (raw := get("REDIS_KEY_PREFIX")) is not None:
        if len(raw) > 64 or not all(c.isalnum() or c in ":_-." for c in raw):
            raise ConfigError("REDIS_KEY_PREFIX must be up to 64 letters, digits or :_-. , "
                              f"not '{raw}'.")
        kw["redis_key_prefix"] = raw
    count = None
    if (raw := get("SHARD_COUNT")) is not None:
        count = kw["shard_count"] = _int("SHARD_COUNT", raw, 1, MAX_SHARDS)
    if (raw := get("SHARD_IDS")) is not None:
        if count is None:
            raise ConfigError("SHARD_IDS needs SHARD_COUNT: set how many shards there are "
                              "in all, e.g. SHARD_COUNT=4 SHARD_IDS=0,1.")
        ids = _shard_ids(raw)
        if any(i >= count for i in ids) or len(set(ids)) != len(ids):
            raise ConfigError(f"SHARD_IDS must be distinct numbers from 0 to {count - 1} "
                              f"(SHARD_COUNT={count}), not '{raw}'.")
        kw["shard_ids"] = tuple(sorted(ids))
    if (raw := get("PROCESS_COUNT")) is not None:
        kw["process_count"] = _int("PROCESS_COUNT", raw, 1, MAX_SHARDS)

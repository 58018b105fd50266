"""What each setting means, for ``--help`` (the README's Configuration table says the same)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from .config import Settings

# (environment name, meaning); the default comes from Settings itself.
SETTINGS: tuple[tuple[str, str], ...] = (
    ("DISCORD_TOKEN", "the bot's token (Developer Portal → Bot → Reset Token); required by the bot"),
    ("DISCORD_GUILD_ID", "a server id: commands sync there at once; empty syncs globally"),
    ("DISCORD_API_BASE", "Discord REST base, for a REST proxy (and the tests)"),
    ("DISCORD_GATEWAY_URL", "Discord gateway, for a proxy (and the tests)"),
    ("PIXABAY_API_KEY", "your Pixabay API key (https://pixabay.com/api/docs/); required "
                        "unless SEARCH_SOURCE=openverse"),
    ("PIXABAY_API_URL", "the Pixabay API endpoint"),
    ("PIXABAY_RATE_LIMIT", "requests per 60 s this bot may send (Pixabay allows 100)"),
    ("IMAGE_HOSTS", "hosts images may be downloaded from"),
    ("IMAGE_VARIANT", "webformat size ranked: 180, 340, 640 or 960"),
    ("CLIP_MODEL", "an open_clip model name, hf-hub:org/repo or local-dir:/path"),
    ("CLIP_PRETRAINED", "a pretrained tag of that model or a weights file"),
    ("CLIP_DEVICE", "auto (CUDA when present), cpu, cuda or cuda:N"),
    ("CLIP_BACKEND", "auto (ONNX Runtime on CPU, torch on CUDA), torch or onnx"),
    ("CLIP_PRECISION", "auto (int8 on CPU, fp16 on CUDA), fp32, fp16 or int8"),
    ("DATA_DIR", "where the SQLite caches and the bot's state live"),
    ("SEARCH_CANDIDATES", "Pixabay candidates ranked per search (1-500)"),
    ("MAX_CONCURRENT_SEARCHES", "searches running at once; twice as many more may wait"),
    ("USER_COOLDOWN_SECONDS", "seconds a member waits between searches (0: off)"),
    ("SEARCH_DEADLINE_SECONDS", "seconds a search may take (1-600); then it ranks what "
                                "arrived"),
    ("RESULTS_KEEP_DAYS", "days a results message keeps its ranking for paging"),
    ("LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR; other libraries log at WARNING unless DEBUG"),
    ("LOG_FORMAT", "text, or json (one object per line, for log shippers)"),
    ("METRICS_PORT", "serve Prometheus metrics at /metrics on this port; empty: off"),
    ("METRICS_HOST", "the address /metrics listens on"),
    ("SEARCH_SOURCE", "the default source: pixabay or openverse (Openverse needs no key)"),
    ("OPENVERSE_API_URL", "the Openverse API; its host joins the image allow-list"),
    ("OPENVERSE_CLIENT_ID", "optional: a registered Openverse application (with the secret)"),
    ("OPENVERSE_CLIENT_SECRET", "that application's secret; set both or neither"),
    ("RESULTS_LAYOUT", "auto (a contact sheet above 4 a page), list or grid"),
    ("DATABASE_URL", "postgresql://user@host:5432/db: state and caches in PostgreSQL, shared by "
                     "every process; empty: SQLite files in DATA_DIR"),
    ("DATABASE_POOL_SIZE", "PostgreSQL connections kept open by the cache and by the state, each"),
    ("DATABASE_MAX_OVERFLOW", "connections each may open beyond the pool under load, then wait "
                              "up to 10 s"),
)


def default(name: str) -> str:
    (f,) = [f for f in fields(Settings) if f.name == name.lower()]
    value = f.default if f.default is not MISSING else None
    if value is None:
        return "—" if name.endswith(("_TOKEN", "_KEY")) else "(empty)"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe() -> str:
    """The settings as a table for ``--help``."""
    width = max(len(name) for name, _ in SETTINGS)
    lines = ["settings (from the environment, then --env-file PATH or ./.env):"]
    for name, meaning in SETTINGS:
        lines.append(f"  {name:<{width}}  {meaning} [default: {default(name)}]")
    return "\n".join(lines)

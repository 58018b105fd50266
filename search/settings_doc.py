"""The settings table: the one description of every setting.

``--help``, ``.env.example`` and ``docs/configuration.md`` are produced from it, and
tests hold ``Settings`` (search/config.py) to it. ``python -m search.settings_doc``
(or ``make docs``) rewrites the two files; ``--check`` only says whether they are stale.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from .config import Settings

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"


@dataclass(frozen=True)
class Setting:
    name: str  # the environment name; Settings has the field name.lower() and its default
    section: str  # the heading it is listed under (rows of one section stay together)
    meaning: str  # one line, plain text: --help, .env.example and the docs
    more: str = ""  # optional detail, plain text: .env.example and the docs, not --help
    # Why .env.example leaves it commented out (an empty string: it is set there).
    unset_in_example: str = ""


# HOW TO ADD A SETTING
#   1. a field on Settings (search/config.py), with its default, and its parsing in
#      Settings.from_mapping (one ConfigError sentence naming the variable for a bad value);
#   2. a Setting row below, in the section where an operator would look for it;
#   3. `make docs` (= .venv/bin/python -m search.settings_doc) to rewrite .env.example and
#      docs/configuration.md, and commit them. tests/test_settings_doc.py fails until you do.
SETTINGS: tuple[Setting, ...] = (
    Setting("DISCORD_TOKEN", "Discord",
            "the bot's token (Developer Portal → Bot → Reset Token); required by the bot"),
    Setting("DISCORD_GUILD_ID", "Discord",
            "a server id: commands sync there at once; empty syncs globally",
            "A global sync can take up to an hour to show."),
    Setting("DISCORD_API_BASE", "Discord", "Discord REST base, for a REST proxy (and the tests)"),
    Setting("DISCORD_GATEWAY_URL", "Discord", "Discord gateway, for a proxy (and the tests)"),
    Setting("PIXABAY_API_KEY", "Pixabay",
            "your Pixabay API key (https://pixabay.com/api/docs/); required unless "
            "SEARCH_SOURCE=openverse",
            "Log in at Pixabay to see it. Without it and with SEARCH_SOURCE=openverse, "
            "/findimage offers Openverse alone."),
    Setting("PIXABAY_API_URL", "Pixabay", "the Pixabay API endpoint"),
    Setting("PIXABAY_RATE_LIMIT", "Pixabay",
            "requests per 60 s this bot may send (Pixabay allows 100)",
            "Lower it when several programs share one key."),
    Setting("IMAGE_HOSTS", "Pixabay", "hosts images may be downloaded from",
            "https only; plain http only for loopback hosts. OPENVERSE_API_URL's host is "
            "added to it."),
    Setting("IMAGE_VARIANT", "Pixabay", "webformat size ranked: 180, 340, 640 or 960",
            "340 is the smallest CLIP needs without upscaling."),
    Setting("SEARCH_SOURCE", "Openverse",
            "the default source: pixabay or openverse (Openverse needs no key)",
            "With openverse, PIXABAY_API_KEY is optional; without it only Openverse is "
            "offered."),
    Setting("OPENVERSE_API_URL", "Openverse",
            "the Openverse API; its host joins the image allow-list",
            "Thumbnails come from it. Anonymous callers get 20 results a page and about 20 "
            "requests a minute."),
    Setting("OPENVERSE_CLIENT_ID", "Openverse",
            "optional: a registered Openverse application (with the secret)",
            "OAuth2 client credentials; with them, pages of up to 500 and a larger budget."),
    Setting("OPENVERSE_CLIENT_SECRET", "Openverse",
            "that application's secret; set both or neither"),
    Setting("CLIP_MODEL", "The model",
            "an open_clip model name, hf-hub:org/repo or local-dir:/path",
            "Zoo and hf-hub weights download on the first start; a local-dir: folder holds "
            "open_clip_config.json and open_clip_model.safetensors."),
    Setting("CLIP_PRETRAINED", "The model", "a pretrained tag of that model or a weights file",
            "Ignored for hf-hub: and local-dir:."),
    Setting("CLIP_DEVICE", "The model", "auto (CUDA when present), cpu, cuda or cuda:N"),
    Setting("CLIP_BACKEND", "The model",
            "auto (ONNX Runtime on CPU, torch on CUDA), torch or onnx",
            "onnx serves on CPU only. A first start serves with torch while it exports the ONNX "
            "files beside it, in a child process, and keeps them in MODEL_CACHE_DIR "
            "(docs/operations.md)."),
    Setting("CLIP_PRECISION", "The model",
            "auto (int8 on CPU, fp16 on CUDA), fp32, fp16 or int8",
            "fp16 needs CUDA, int8 ONNX Runtime. Each export keeps int8 only if it ranks the "
            "bundled probe photographs as fp32 does; otherwise fp32 ONNX serves and the log "
            "and --check say why. fp32 turns int8 off (exact torch vectors, about 3.5x slower "
            "on CPU)."),
    Setting("DATA_DIR", "Searches and data", "where the SQLite caches and the bot's state live",
            "What each file holds, and backups: docs/operations.md.",
            unset_in_example="Left unset here: copied into the systemd unit's EnvironmentFile, "
                             "a DATA_DIR would win over the unit's /var/lib/findimage."),
    Setting("MODEL_CACHE_DIR", "Searches and data",
            "where the exported ONNX model files live; empty: DATA_DIR/models",
            "`make model` (python -m search.export) fills it ahead of time, so an image build, a "
            "deploy step or a shared volume can serve many processes; a start then loads no "
            "torch weights."),
    Setting("SEARCH_CANDIDATES", "Searches and data",
            "Pixabay candidates ranked per search (1-500)", "Pixabay serves at most 500."),
    Setting("MAX_CONCURRENT_SEARCHES", "Searches and data",
            "searches running at once; twice as many more may wait",
            "Past that, members are told the bot is busy."),
    Setting("USER_COOLDOWN_SECONDS", "Searches and data",
            "seconds a member waits between searches (0: off)"),
    Setting("SEARCH_DEADLINE_SECONDS", "Searches and data",
            "seconds a search may take (1-600); then it ranks what arrived",
            "The answer says how many images were left out."),
    Setting("RESULTS_KEEP_DAYS", "Searches and data",
            "days a results message keeps its ranking for paging",
            "1-3650. Older rankings are pruned; paging them says the results expired."),
    Setting("RESULTS_LAYOUT", "Searches and data",
            "auto (a contact sheet above 5 a page), list or grid",
            "list posts embeds, grid one contact sheet."),
    Setting("SEARCH_LANGUAGE", "Searches and data",
            "the language tags are typed in, sent as Pixabay's lang (its 26 codes)",
            "cs da de en es fr id it hu nl no pl pt ro sk fi sv tr vi th bg ru el ja ko zh. "
            "A member's lang option wins; Openverse has no such parameter."),
    Setting("DEDUPE_SIMILARITY", "Searches and data",
            "a hit at this cosine or more to a better-ranked one is folded into it",
            "Near-duplicates take no rank; the page says how many were folded. 1 folds only "
            "identical images; why 0.9995: docs/results.md."),
    Setting("DISCORD_CDN_HOSTS", "Discord",
            "the only hosts members' pictures (image:, Find similar images) come from",
            "host, or host:port for that port only. Attachments are streamed under the "
            "candidates' caps (10 MB, 10 s)."),
    Setting("DATABASE_URL", "Several processes",
            "postgresql://user@host:5432/db: the bot's state and the caches in PostgreSQL, "
            "shared by every process; empty: SQLite files in DATA_DIR",
            "Each process creates or upgrades the schema at start-up. docs/scaling.md says "
            "what is kept, the faults handled and how to back it up (pg_dump)."),
    Setting("DATABASE_POOL_SIZE", "Several processes",
            "PostgreSQL connections the cache and the state each keep open (1-100)",
            "So a process holds up to 2 x (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW) "
            "connections: size max_connections for every process."),
    Setting("DATABASE_MAX_OVERFLOW", "Several processes",
            "connections each may open beyond the pool under load (0-100); then a call "
            "waits up to 10 s"),
    Setting("REDIS_URL", "Several processes",
            "redis://host:port/n: source budgets, pick and interaction claims, page-turn "
            "locks and IDENTIFY turns shared by every process; empty: in this process",
            "One budget per source endpoint and key, counted by one atomic Lua script. "
            "Unreachable at start-up: exit 2. Away mid-run: each process keeps to its "
            "share (PROCESS_COUNT) and searches still answer; docs/scaling.md."),
    Setting("REDIS_KEY_PREFIX", "Several processes",
            "the prefix of every key the bot writes in Redis, so several bots share one"),
    Setting("SHARD_COUNT", "Several processes",
            "how many gateway shards the bot has in all; empty: discord.py asks Discord",
            "Discord requires shards past 2,500 servers; set it when shards run in several "
            "processes."),
    Setting("SHARD_IDS", "Several processes",
            "the shards this process runs: a comma list or a range (0,1 or 4-7; needs "
            "SHARD_COUNT); empty: all of them",
            "deploy/findimage@.service takes it from the instance name."),
    Setting("PROCESS_COUNT", "Several processes",
            "processes sharing the source keys: while Redis is away each sends at most "
            "limit / PROCESS_COUNT; empty: SHARD_COUNT / number of SHARD_IDS"),
    Setting("LOG_LEVEL", "Logs and metrics",
            "DEBUG, INFO, WARNING or ERROR; other libraries log at WARNING unless DEBUG",
            "Reading the logs: docs/operations.md."),
    Setting("LOG_FORMAT", "Logs and metrics",
            "text, or json (one object per line, for log shippers)"),
    Setting("METRICS_PORT", "Logs and metrics",
            "serve Prometheus metrics at /metrics on this port; empty: off",
            "0 picks any free port and logs it."),
    Setting("METRICS_HOST", "Logs and metrics", "the address /metrics listens on",
            "Keep it on a private network."),
    Setting("INFERENCE_URL", "Inference service",
            "http://host:port of a `python -m search.serve` service; empty: the encoder runs "
            "in this process",
            "Set, this process sends downloaded images and phrases there and imports neither "
            "torch nor ONNX Runtime; the service must serve the model CLIP_MODEL and "
            "CLIP_PRETRAINED name. See docs/scaling.md."),
    Setting("SERVE_HOST", "Inference service",
            "the address `python -m search.serve` listens on",
            "Only a trusted network should reach it: the service has no authentication."),
    Setting("SERVE_PORT", "Inference service", "the port `python -m search.serve` listens on"),
    Setting("SERVE_REPLICAS", "Inference service",
            "encoder replicas `python -m search.serve` runs (1-64; one GPU each on CUDA)"),
)

ENV_EXAMPLE_HEAD = """\
# Copy to .env and fill in. Values in the real environment win over this file.
# Generated from the table in search/settings_doc.py by `make docs`; edit it there.
"""

CONFIGURATION_HEAD = """\
# Configuration

<!-- Generated from the table in search/settings_doc.py by `make docs`
     (python -m search.settings_doc); edit the table there, not this file. -->

Every setting is read from the environment, then from the file named by
`--env-file PATH` or `./.env` (copy `.env.example`, which lists the same settings with
their defaults); the environment wins. `python -m bot --help` prints this table too.
"""

CONFIGURATION_TAIL = """\
## When a value is wrong

An invalid value stops start-up with one sentence naming the variable and what is
allowed, e.g. `error: CLIP_DEVICE must be auto, cpu, cuda or cuda:N, not 'tpu'.`
An unusable `DATA_DIR` does the same, in the bot and the CLI (exit 2), e.g.
`error: DATA_DIR './data' cannot be written (read-only file system); give this user
write access or point DATA_DIR elsewhere.`, `error: DATA_DIR './data' is a file, not a
folder; …`, or `error: DATA_DIR file data/bot.sqlite3 is corrupt (…); restore it from a
backup (see docs/operations.md) or move it aside to start with no saved results.`
Combinations that cannot run say so at start: `CLIP_PRECISION=int8 runs on ONNX
Runtime; set CLIP_BACKEND to auto or onnx, or CLIP_PRECISION to fp32.`, `CLIP_PRECISION=fp16
needs CUDA; on CPU use auto, fp32 or int8.`, `CLIP_BACKEND=onnx serves on CPU only; use
auto or torch with CLIP_DEVICE=cuda.`

`python -m bot --check` checks every setting, the token, the key and the model before
going live (see [operations](operations.md#before-going-live---check)).
"""


def _value(name: str) -> object:
    (f,) = [f for f in fields(Settings) if f.name == name.lower()]
    return f.default if f.default is not MISSING else None


def env_value(name: str) -> str:
    """The default as a .env line writes it ('' for none)."""
    value = _value(name)
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default(name: str) -> str:
    """The default as --help and the docs show it."""
    if (value := env_value(name)) != "":
        return value
    return "—" if name.endswith(("_TOKEN", "_KEY")) else "(empty)"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def describe() -> str:
    """The settings as a table for ``--help``."""
    width = max(len(s.name) for s in SETTINGS)
    lines = ["settings (from the environment, then --env-file PATH or ./.env):"]
    for s in SETTINGS:
        lines.append(f"  {s.name:<{width}}  {s.meaning} [default: {default(s.name)}]")
    return "\n".join(lines)


def _sections() -> list[tuple[str, list[Setting]]]:
    sections: list[tuple[str, list[Setting]]] = []
    for s in SETTINGS:
        if not sections or sections[-1][0] != s.section:
            sections.append((s.section, []))
        sections[-1][1].append(s)
    return sections


def env_example() -> str:
    """The text of .env.example: every setting at its default, with what it means."""
    parts = [ENV_EXAMPLE_HEAD]
    for section, rows in _sections():
        parts.append(f"\n# --- {section} ---\n")
        for s in rows:
            text = _sentence(s.meaning) + (f" {s.more}" if s.more else "")
            if s.unset_in_example:
                text += f" {s.unset_in_example}"
            for line in textwrap.wrap(text, 90):
                parts.append(f"# {line}\n")
            parts.append(f"{'# ' if s.unset_in_example else ''}{s.name}={env_value(s.name)}\n")
    return "".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def configuration_md() -> str:
    """The text of docs/configuration.md."""
    parts = [CONFIGURATION_HEAD]
    for section, rows in _sections():
        parts.append(f"\n## {section}\n\n| variable | default | meaning |\n|---|---|---|\n")
        for s in rows:
            shown = default(s.name)
            shown = f"`{shown}`" if env_value(s.name) else shown
            text = _sentence(s.meaning) + (f" {s.more}" if s.more else "")
            parts.append(f"| `{s.name}` | {_cell(shown)} | {_cell(text)} |\n")
    parts.append("\n" + CONFIGURATION_TAIL)
    return "".join(parts)


GENERATED = {ENV_EXAMPLE: env_example, CONFIGURATION_MD: configuration_md}


def stale() -> list[Path]:
    """The generated files whose text is not what the table produces."""
    return [path for path, make in GENERATED.items()
            if not path.is_file() or path.read_text(encoding="utf-8") != make()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m search.settings_doc",
        description="Write .env.example and docs/configuration.md from the settings table.")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming the files that are stale")
    args = p.parse_args(argv)
    if args.check:
        for path in (old := stale()):
            print(f"{path.relative_to(ROOT)} is stale; run `make docs`.", file=sys.stderr)
        return 1 if old else 0
    for path, make in GENERATED.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

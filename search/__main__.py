"""The CLI: python -m search TAG [PHRASE] [--image FILE] [--source S] [--top N] [--offset K]
[--candidates M] [--lang L] [--no-dedupe] [--json] [--grid FILE]

Exit codes: 0 found; 2 bad input or settings (DATA_DIR included); 3 the source (Pixabay,
Openverse) refused or failed; 4 rate limited; 5 nothing found (no hits, or no image
readable); 75 the model hub is unreachable and the weights are not cached (try again);
130 / 143 interrupted (SIGINT / SIGTERM); 1 anything else.

Start-up order: arguments, settings and the query are checked, then DATA_DIR, and only
then are torch and the model imported, so a mistake is reported in well under a second.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports: Ctrl-C works from the first moment
    from search import interrupt

    interrupt.install()

import argparse
import asyncio
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import interrupt, logs
from .config import Settings
from .errors import (
    AllImagesFailed,
    ConfigError,
    InvalidQuery,
    ModelHubUnreachable,
    ModelLoadError,
    NoResults,
    RateLimited,
    SearchError,
    SourceError,
)
from .inference import InferenceRefused, InferenceUnavailable
from .models import (
    COLORS,
    IMAGE_TYPES,
    LANGS,
    MAX_CANDIDATES,
    MAX_QUERY_IMAGE_BYTES,
    MAX_TOP,
    ORDERS,
    ORIENTATIONS,
    SOURCES,
    Filters,
    Query,
)
from .sources import adapter, check_language, require
from .sqlite import check_data_dir

if TYPE_CHECKING:  # the service imports torch: only once every cheap check has passed
    from .service import SearchResult, SearchService

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidQuery, 2), (ConfigError, 2), (ModelHubUnreachable, 75), (ModelLoadError, 2),
    (RateLimited, 4), (SourceError, 3), (InferenceUnavailable, 3), (InferenceRefused, 3),
    (NoResults, 5), (AllImagesFailed, 5), (SearchError, 1),
)


SCORES = ("score: the cosine similarity of the image's and the query's CLIP vectors. The "
          "table and the sheet show 100 x cosine, floored at 0, with one decimal (75.0), as "
          "the bot does; --json gives the cosine itself (0.749622). Higher is closer; it "
          "ranks the hits of one query, and is neither a percentage nor comparable across "
          "models.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m search",
        description="Rank images tagged TAG by similarity to PHRASE, to an image, or both.",
        epilog=SCORES)
    p.add_argument("tag", help="the tag that fetches candidates, e.g. tiger")
    p.add_argument("phrase", nargs="?", default=None,
                   help='what the picture shows, e.g. "tiger playing in the snow" '
                        "(optional with --image)")
    p.add_argument("--image", type=Path, metavar="FILE",
                   help="rank by similarity to this picture (with PHRASE: to both)")
    p.add_argument("--source", choices=SOURCES, default=None,
                   help="where candidates come from (default SEARCH_SOURCE, else pixabay)")
    p.add_argument("--top", type=int, default=5, help=f"hits to show (1-{MAX_TOP}, default 5)")
    p.add_argument("--offset", type=int, default=0, help="skip this many ranks (paging)")
    p.add_argument("--candidates", type=int, default=None,
                   help=f"candidates to rank (1-{MAX_CANDIDATES}, default "
                   "SEARCH_CANDIDATES)")
    p.add_argument("--image-type", choices=IMAGE_TYPES, default="all")
    p.add_argument("--orientation", choices=ORIENTATIONS, default="all")
    p.add_argument("--colors", default="", help=f"comma list of: {', '.join(COLORS)}")
    p.add_argument("--order", choices=ORDERS, default="popular")
    p.add_argument("--lang", choices=LANGS, default=None,
                   help="the language TAG is typed in (Pixabay only; default SEARCH_LANGUAGE)")
    p.add_argument("--no-dedupe", action="store_true",
                   help="keep near-duplicates (default: fold each into the better-ranked "
                        "image at DEDUPE_SIMILARITY)")
    p.add_argument("--no-safesearch", action="store_true", help="include images unsuitable "
                   "for all ages")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (scores raw, from -1 to 1)")
    p.add_argument("--grid", type=Path, metavar="FILE.png",
                   help="write a contact sheet of the hits (rank, score and id on each tile)")
    p.add_argument("-v", "--verbose", action="store_true", help="log skipped images and retries")
    p.add_argument("--env-file", type=Path, metavar="PATH",
                   help="read settings from PATH instead of ./.env (the environment still wins)")
    return p.parse_args(argv)


def hit_json(h) -> dict:
    data = {"rank": h.rank, "id": h.hit.id, "score": round(h.score, 6),
            "page_url": h.hit.page_url, "image_url": h.hit.image_url,
            "preview_url": h.hit.preview_url, "tags": list(h.hit.tags), "user": h.hit.user}
    data.update(adapter(h.hit).json_fields(h.hit))
    return data


def to_json(result: SearchResult) -> dict:
    return {
        "source": result.source,
        "tag": result.tag,
        "phrase": result.phrase,
        "image": result.by_image,
        "candidates": result.candidates,
        "hits": [hit_json(h) for h in result.hits],
        "timings": {k: round(v, 1) for k, v in result.timings.items()},
        "skipped": result.skipped,
        "truncated": result.truncated,
        "cached": result.cached,
        "left_out": result.left_out,
        "folded": result.ranking.folded,
    }


def to_table(result: SearchResult) -> str:
    width = max([9, *(len(str(h.hit.id)) for h in result.hits)])
    source = adapter(result.source)
    lines = [f"{'rank':>4}  {'score':>5}  {'id':>{width}}  {source.table_column:<32}  page"]
    for h in result.hits:
        text = source.table_text(h.hit)[:32]
        lines.append(f"{h.rank:>4}  {h.display:>5.1f}  {str(h.hit.id):>{width}}  {text:<32}  "
                     f"{h.hit.page_url}")
    t = result.timings
    stages = "  ".join(f"{k} {t[k]:.0f} ms" for k in ("api", "download", "decode", "encode",
                                                       "rank", "total") if k in t)
    skipped = sum(result.skipped.values())
    lines.append(f"{result.candidates} candidates ranked"
                 + (f", {skipped} skipped ({_reasons(result.skipped)})" if skipped else "")
                 + (", from cache" if result.cached else "") + f"; {stages}")
    if result.ranking.folded:
        lines.append(f"note: {result.ranking.folded} near-duplicates were folded into "
                     "better-ranked images (--no-dedupe keeps them).")
    if result.truncated:
        lines.append("note: the phrase was longer than the model reads; its end was ignored.")
    if result.left_out:
        lines.append(f"note: {result.left_out} images were still downloading at the search's "
                     "deadline (SEARCH_DEADLINE_SECONDS) and were left out.")
    lines.append(source.cli_footer())
    return "\n".join(lines)


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))


async def write_grid(service: SearchService, result: SearchResult, path: Path) -> int:
    labels = [f"#{h.rank}  {h.display:.1f}" for h in result.hits]
    captions = [str(h.hit.id) for h in result.hits]
    data = await service.contact_sheet(result.hits, labels, captions=captions, fmt="PNG")
    await asyncio.to_thread(path.write_bytes, data)
    return len(labels)


def read_image(path: Path) -> bytes:
    """The query picture's bytes, within the cap and an image by its header, or one sentence
    in the CLI's words (before the model loads)."""
    try:
        size = path.stat().st_size
        if size > MAX_QUERY_IMAGE_BYTES:
            raise InvalidQuery(f"The image {path} is {size / 1e6:.1f} MB; use one of at most "
                               f"{MAX_QUERY_IMAGE_BYTES // (1024 * 1024)} MB.")
        data = path.read_bytes()
    except OSError as e:
        raise InvalidQuery(f"Cannot read the image {path}: {e.strerror or e}.") from None
    from PIL import Image  # the header only: decoding waits for the decode threads

    try:
        with Image.open(io.BytesIO(data)):
            pass
    except Exception:  # not an image, or one Pillow refuses outright (a pixel bomb)
        raise InvalidQuery(f"--image {path} is not a picture I can read; give a JPEG, PNG, "
                           "GIF or WebP file.") from None
    return data


def build_query(args: argparse.Namespace, settings: Settings) -> Query:
    """The request, checked before anything heavy loads (InvalidQuery on bad input)."""
    colors = tuple(c.strip() for c in args.colors.split(",") if c.strip())
    source = args.source or settings.search_source
    if args.lang is not None:
        check_language(source, args.lang)
    filters = Filters(image_type=args.image_type, orientation=args.orientation, colors=colors,
                      order=args.order, safesearch=not args.no_safesearch,
                      lang=args.lang or settings.search_language)
    if not 1 <= args.top <= MAX_TOP:
        raise InvalidQuery(f"top must be from 1 to {MAX_TOP}.")
    if args.offset < 0:
        raise InvalidQuery("offset must be 0 or more.")
    image = read_image(args.image) if args.image else None
    return Query(args.tag, args.phrase, args.candidates or settings.search_candidates, filters,
                 args.source or settings.search_source, image)


async def run(args: argparse.Namespace, settings: Settings, query: Query) -> SearchResult:
    from .service import SearchService

    bar = None
    progress = None
    if sys.stdout.isatty() and not args.json:
        from tqdm import tqdm

        def progress(stage: str, done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc="download + encode", unit="img", leave=False)
            bar.update(done - bar.n)

    from .tuning import freeze_heap, tune_process  # the process is ours: tune it

    tune_process(in_process=not settings.inference_url)
    async with SearchService.open(settings.replace(search_source=query.source)) as service:
        freeze_heap()
        encoder = service.encoder
        export_bar = None
        if progress is not None and encoder.exporting:
            from tqdm import tqdm

            export_bar = tqdm(total=5, desc="ONNX export (torch serves meanwhile)",
                              unit="step", leave=False, position=1)

            def exported(done: int, of: int, what: str) -> None:
                export_bar.total = of
                export_bar.set_postfix_str(what)
                export_bar.update(done - export_bar.n)

            encoder.on_export_progress = exported
        try:
            result = await service.find_query(query, top=args.top, offset=args.offset,
                                              progress=progress, dedupe=not args.no_dedupe)
        finally:
            if bar is not None:
                bar.close()
            if export_bar is not None:
                encoder.on_export_progress = None
                export_bar.close()
        if encoder.exporting and not args.json:
            print("note: torch served this query while the ONNX export ran beside it; it stops "
                  "now. `python -m search.export` (make model) makes the files once, and "
                  "later queries are faster.", file=sys.stderr)
        if args.grid:
            try:
                await write_grid(service, result, args.grid)
            except OSError as e:
                raise SearchError(f"Cannot write the contact sheet {args.grid}: "
                                  f"{e.strerror or e}.") from e
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.for_entry_point(args.env_file)
        logs.setup("INFO" if args.verbose else "ERROR", settings.log_format,
                   secrets=(settings.pixabay_api_key or "",))
        query = build_query(args, settings)
        require(settings, query.source)
        check_data_dir(settings.data_dir)
        result = interrupt.run(run(args, settings, query))
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(e, kind))
    except interrupt.Interrupted as e:
        interrupt.say(e.signum)
        return e.exit_code
    except KeyboardInterrupt:  # main() called without install(), from Python
        print("error: interrupted.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(to_json(result)))
    else:
        print(to_table(result))
        if args.grid:
            print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

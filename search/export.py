"""``python -m search.export``: make the ONNX model files ahead of time (``make model``).

Exports CLIP_MODEL's towers for CLIP_PRECISION (int8 when auto, kept only if it ranks
the probe photographs as fp32 does), checks them against torch and writes them into
MODEL_CACHE_DIR (default DATA_DIR/models). An image build, a deploy step or a shared
volume can run it once for many processes; a start then loads no torch weights. It is
also how to try again after an export failed: starts do not retry on their own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import logs
from .config import Settings
from .errors import SearchError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-file", type=Path, help="settings file (default: ./.env)")
    p.add_argument("--cache-dir", type=Path,
                   help="where to write the files (default: MODEL_CACHE_DIR or DATA_DIR/models)")
    p.add_argument("--precision", choices=("auto", "int8", "fp32"),
                   help="default: CLIP_PRECISION (auto: int8 if it agrees with fp32)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.for_entry_point(args.env_file)
        logs.setup("INFO" if args.verbose else "ERROR", settings.log_format,
                   secrets=(settings.pixabay_api_key or "",))
        settings.check_model()
        from .clip.backends import AUTO_CPU_PRECISION, failure, forget_failure
        from .clip.export import export_model, remove_stale_staging
        from .clip.model import load_model

        precision = args.precision or settings.clip_precision
        if precision == "auto":
            precision = AUTO_CPU_PRECISION
        if precision not in ("int8", "fp32"):
            raise SearchError(f"ONNX files are fp32 or int8, not {precision}; set "
                              "CLIP_PRECISION or --precision to auto, int8 or fp32.")
        root = args.cache_dir or settings.models_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchError(f"Cannot create {root}: {e.strerror or e}; set MODEL_CACHE_DIR "
                              "or --cache-dir to a writable folder.") from None
        remove_stale_staging(root)
        skeleton = load_model(settings.clip_model, settings.clip_pretrained, "cpu",
                              weights=False)
        if (why := failure(skeleton, root, precision)) is not None:
            print(f"an earlier export failed ({why}); trying again", file=sys.stderr)
            forget_failure(skeleton, root, precision)
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=5 if precision == "int8" else 4, desc="ONNX export", unit="step",
                       file=sys.stderr, leave=False)

        def progress(done: int, of: int, what: str) -> None:
            if bar is not None:
                bar.total = of
                bar.set_postfix_str(what)
                bar.update(done - bar.n)
            else:
                print(f"ONNX export {done}/{of}: {what}", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        try:
            outcome = export_model(settings.clip_model, settings.clip_pretrained, precision,
                                   root, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published.", file=sys.stderr)
        return 130
    except Exception as e:  # the exporters raise many kinds; each is one line
        print(f"error: the ONNX export failed ({type(e).__name__}: "
              f"{' '.join(str(e).split())[:300]}); starts serve with torch.", file=sys.stderr)
        return 1
    print(f"{outcome.precision} ONNX files in {outcome.folder} "
          f"({time.perf_counter() - t0:.0f} s)" + (f"; {outcome.note}" if outcome.note else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

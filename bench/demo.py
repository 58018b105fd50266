"""make demo: the CLI against the fake catalogue with the test model, as a newcomer would run it.

``python -m bench.demo [--data-dir data/demo]`` starts the fake Pixabay on loopback, then
runs ``python -m search`` three times, each as its own process, printing each command
before its output: a cold query (every image downloaded and encoded), a warm one on the
same tag (from the caches the first one filled), and a contact sheet (``--grid``), whose
path it prints last. No account and no network are needed.

The data folder is emptied first, so the first query is always cold; only a folder this
demo made (it holds a ``.findimage-demo`` marker) is ever emptied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path

from .fakes.pixabay import FakePixabay
from .fakes.serve import ROOT, product_env

MARKER = ".findimage-demo"
QUERIES = (
    ("a cold query: every image is downloaded and encoded",
     ["circle", "a red circle on snow", "--top", "5"]),
    ("a warm query on the same tag: the images and their vectors come from the cache",
     ["circle", "a blue circle on grass", "--top", "5"]),
    ("a contact sheet of the hits",
     ["circle", "a yellow circle on sand", "--top", "9", "--grid", "{grid}"]),
)


def fresh(folder: Path) -> Path:
    """``folder``, empty and marked as the demo's; SystemExit if it holds anything else."""
    if folder.exists():
        if not (folder / MARKER).is_file():
            if folder.is_dir() and not any(folder.iterdir()):
                pass
            else:
                raise SystemExit(f"error: {folder} exists and is not the demo's own folder; "
                                 "give another with --data-dir.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by python -m bench.demo; emptied at each run\n")
    return folder


async def run(data_dir: Path) -> int:
    grid = data_dir / "grid.png"
    async with FakePixabay() as fake:
        env = product_env(fake)
        env["DATA_DIR"] = str(data_dir)
        print("The fake Pixabay serves a catalogue of synthetic photos (shapes in six colours "
              "on four backgrounds)\nat " + fake.api_url + "; the CLI ranks them with the "
              "test model. The settings it runs with:")
        for name, value in env.items():
            print(f"  {name}={value}")
        child_env = {**os.environ, **env}
        for what, args in QUERIES:
            args = [a.format(grid=grid) for a in args]
            print(f"\n# {what}\n$ python -m search {shlex.join(args)}", flush=True)
            # The CLI in its own process, as typed; this loop keeps serving the fake.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "search", *args, env=child_env, cwd=ROOT)
            if await proc.wait() != 0:
                print(f"error: the CLI exited {proc.returncode}; see its message above.",
                      file=sys.stderr)
                return 1
    print(f"\ncontact sheet: {grid.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "demo",
                   help="the demo's DATA_DIR, emptied first (default data/demo)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(fresh(args.data_dir)))
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark: the product against a fake Pixabay on loopback, beside a seed-style baseline.

One command, from the repository root::

    make bench                                   # = .venv/bin/python -m bench
    .venv/bin/python -m bench --runs 3 --baseline-runs 2
    .venv/bin/python -m bench --quick            # tiny model, a few images: well under a minute
    .venv/bin/python -m bench --model local-dir:tests/fixtures/tiny-clip
    CLIP_DEVICE=cuda .venv/bin/python -m bench   # the GPU rows (P1, P2, P6)

By default it loads open_clip ``ViT-B-32`` with random weights (speed does not depend
on them, and nothing is downloaded) on ``CLIP_DEVICE`` (``auto``: CUDA when present).
The fake runs in a child process with ``--latency-ms`` (30) added to every request,
so its work never runs on the event loop being measured. Every image is downloaded
once before timing, so the fake never draws while it is timed.

Scenarios (each on empty caches unless said otherwise):

* ``baseline``: the seed-style loop (``bench.baseline``): sequential downloads, PIL,
  batch-1 float32, on the same images and weights, in the same process.
* ``cold``: ``find('circle', phrase, candidates=200)``; ``warm``: the same tag again
  with new phrases, on the caches that query filled.
* ``downloaded``: a cold query whose images come from memory: decode through scores
  (P1 = total - api - download).
* ``concurrent``: 20 queries on distinct tags at once; ``concurrent-downloaded``: the
  same from memory, whose images per second over the encode phase, against
  ``encoder`` (the encoder alone on a batch of 200 preprocessed images already on its
  device), is P6.

* ``cold-torch`` (CPU): the cold query with torch fp32 serving, beside the default
  backend (ONNX Runtime); ``fresh-cold`` / ``fresh-warm``: one query in a new process
  (``bench.fresh``), timed from its start to its exit (P2's first query, P8, P7 on CPU).

It prints a table of medians per stage with the worst event-loop stall (a 5 ms
ticker's lateness), the time to the first provisional page and the ratio to the
baseline, the memory peaks, and the goals P1-P8 with pass / fail / "needs GPU";
``python -m bench.backends`` compares torch, ONNX fp32 and int8 alone. Everything goes
to a JSON file
(``bench/results/`` by default, git-ignored). ``--fetch-concurrency N`` is a what-if:
N downloads in flight per query instead of the product's defaults.
"""

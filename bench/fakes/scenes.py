"""Synthetic scenes: a coloured shape on a textured background.

The tiny CLIP model in ``tests/fixtures/tiny-clip`` is trained on these, and the
fake Pixabay serves them, so every ranking in the tests has a ground truth.
A scene is drawn from relative geometry, so the same (scene, seed) rendered at
180, 340, 640 or 960 pixels is the same picture at another size, as on
Pixabay's CDN.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 20),
    "green": (20, 190, 60),
    "purple": (140, 40, 190),
    "orange": (250, 130, 10),
}
BACKGROUNDS = ("snow", "grass", "sand", "night")
ASPECTS = ((3, 2), (2, 3), (1, 1), (16, 9), (4, 3))


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on {self.background}"

    @property
    def tags(self) -> str:
        return f"{self.shape}, {self.colour}, {self.background}"


ALL_SCENES = tuple(Scene(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS)


def _texture(background: str, w: int, h: int, rng: random.Random) -> Image.Image:
    nrng = np.random.default_rng(rng.randrange(2**32))
    if background == "snow":
        base = np.full((h, w, 3), 235, np.float32) + nrng.normal(0, 10, (h, w, 1))
        base[..., 2] += 10
    elif background == "grass":
        base = np.empty((h, w, 3), np.float32)
        base[:] = (60, 125, 45)
        stripes = np.sin(np.arange(w) / max(w, 1) * rng.uniform(40, 90))[None, :, None]
        base += stripes * 18 + nrng.normal(0, 14, (h, w, 1))
    elif background == "sand":
        base = np.empty((h, w, 3), np.float32)
        base[:] = (214, 190, 140)
        waves = np.sin(np.arange(h) / max(h, 1) * rng.uniform(10, 30))[:, None, None]
        base += waves * 12 + nrng.normal(0, 9, (h, w, 1))
    elif background == "night":
        base = np.empty((h, w, 3), np.float32)
        base[:] = (15, 20, 50)
        base += nrng.normal(0, 5, (h, w, 1))
        stars = nrng.random((h, w)) > 0.997
        base[stars] = 230
    else:
        raise ValueError(f"unknown background {background!r}")
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        pts = [(x * math.sqrt(2) * 0.85, y * math.sqrt(2) * 0.85) for x, y in pts]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = 1.0 if k % 2 == 0 else 0.42
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
               (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def render(scene: Scene, seed: int, width: int, height: int) -> Image.Image:
    """Draw ``scene`` at ``width``×``height``; the geometry depends on ``seed`` only."""
    rng = random.Random(f"{scene}-{seed}")
    img = _texture(scene.background, width, height, rng)
    m = min(width, height)
    r = m * rng.uniform(0.16, 0.34)
    # The shape lies inside the centred m×m square, the part CLIP's shortest-side
    # resize + centre crop keeps, so every photo still shows what its caption says.
    ox, oy = (width - m) / 2, (height - m) / 2
    cx = ox + rng.uniform(r, m - r)
    cy = oy + rng.uniform(r, m - r)
    rot = rng.uniform(-0.35, 0.35)
    jitter = [max(0, min(255, v + rng.randint(-20, 20))) for v in COLOURS[scene.colour]]
    fill = tuple(jitter)
    outline = tuple(int(v * 0.45) for v in fill)
    draw = ImageDraw.Draw(img)
    lw = max(1, round(m / 90))
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=lw)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r, rot), fill=fill, outline=outline, width=lw)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=m / 400))
    return img


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def size_for(aspect: tuple[int, int], longest: int) -> tuple[int, int]:
    aw, ah = aspect
    if aw >= ah:
        return longest, max(1, round(longest * ah / aw))
    return max(1, round(longest * aw / ah)), longest


@dataclass(frozen=True)
class CatalogueEntry:
    """One stock photo: its id, what it shows (the ground truth) and how it was drawn."""

    id: int
    scene: Scene
    seed: int
    aspect: tuple[int, int]
    quality: int

    def image(self, longest: int) -> Image.Image:
        return render(self.scene, self.seed, *size_for(self.aspect, longest))

    def jpeg(self, longest: int) -> bytes:
        return jpeg_bytes(self.image(longest), self.quality)


def catalogue(per_scene: int = 6, *, seed: int = 1000) -> list[CatalogueEntry]:
    """A deterministic stock library: ``per_scene`` photos of every scene.

    With the defaults each shape has 6 colours × 4 backgrounds × 6 = 144 photos
    and each colour/shape pair 24, enough for 200-candidate queries on a shape
    when ``per_scene`` is raised.
    """
    rng = random.Random(seed)
    entries = []
    next_id = 100_000
    for scene in ALL_SCENES:
        for _ in range(per_scene):
            next_id += rng.randint(1, 97)
            entries.append(
                CatalogueEntry(
                    id=next_id,
                    scene=scene,
                    seed=rng.randrange(10**9),
                    aspect=rng.choice(ASPECTS),
                    quality=rng.choice((60, 75, 85, 92)),
                )
            )
    rng.shuffle(entries)
    return entries

"""A synthetic album-cover data set the project generates itself (no third-party images).

Each genre has a palette family and a motif; a fraction of covers borrows the motif of another genre, so the
task is learnable but not trivial and accuracy depends visibly on the hyperparameters."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

DEMO_VERSION = 1
PALETTES = {
    "dark": [(20, 20, 24), (60, 60, 70), (200, 30, 40), (0, 230, 200), (240, 240, 240)],
    "cool": [(20, 60, 140), (40, 150, 200), (150, 210, 230), (230, 240, 250), (10, 30, 70)],
    "warm": [(230, 80, 20), (250, 180, 30), (180, 20, 40), (255, 230, 150), (90, 20, 10)],
    "pastel": [(240, 220, 230), (200, 220, 245), (250, 245, 220), (210, 240, 215), (170, 160, 190)],
    "earthy": [(90, 120, 40), (150, 110, 60), (220, 190, 120), (40, 70, 30), (200, 60, 30)],
}
GENRES = {
    "Rock": ("dark", "diagonal"),
    "Electronic": ("dark", "grid"),
    "Jazz": ("cool", "dots"),
    "Blues": ("cool", "hstripes"),
    "Classical": ("pastel", "frame"),
    "Country": ("earthy", "horizon"),
    "Reggae": ("earthy", "hstripes"),
    "Hip-Hop": ("warm", "blocks"),
}
MOTIFS = sorted({m for _, m in GENRES.values()})


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _draw_motif(draw: ImageDraw.ImageDraw, motif: str, size: int, colours, rng: np.random.Generator) -> None:
    s = size
    if motif == "diagonal":
        step = int(rng.integers(s // 8, s // 4))
        for k in range(-s, 2 * s, step):
            draw.line([(k, 0), (k + s, s)], fill=colours[2], width=max(2, step // 3))
    elif motif == "grid":
        step = int(rng.integers(s // 10, s // 5))
        for k in range(0, s, step):
            draw.line([(k, 0), (k, s)], fill=colours[3], width=1)
            draw.line([(0, k), (s, k)], fill=colours[3], width=1)
    elif motif == "dots":
        for _ in range(int(rng.integers(6, 16))):
            x, y, r = rng.integers(0, s), rng.integers(0, s), rng.integers(s // 20, s // 7)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[int(rng.integers(1, 4))])
    elif motif == "hstripes":
        step = int(rng.integers(s // 8, s // 4))
        for i, k in enumerate(range(0, s, step)):
            draw.rectangle([0, k, s, k + step // 2], fill=colours[1 + i % 3])
    elif motif == "frame":
        m = int(rng.integers(s // 10, s // 5))
        draw.rectangle([m, m, s - m, s - m], outline=colours[4], width=max(2, s // 30))
        draw.ellipse([s // 3, s // 3, 2 * s // 3, 2 * s // 3], outline=colours[4], width=2)
    elif motif == "horizon":
        h = int(rng.integers(s // 3, 2 * s // 3))
        draw.rectangle([0, h, s, s], fill=colours[0])
        peaks = [(0, h)] + [(int(x), int(h - rng.integers(s // 10, s // 3))) for x in np.linspace(0, s, 5)] + [(s, h)]
        draw.polygon(peaks, fill=colours[3])
        r = s // 10
        draw.ellipse([s - 3 * r, r, s - r, 3 * r], fill=colours[4])
    elif motif == "blocks":
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = rng.integers(0, s // 2, size=2)
            w, h = rng.integers(s // 4, s // 2, size=2)
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colours[int(rng.integers(0, 5))])
    else:
        raise ValueError(f"unknown motif {motif}")


def make_cover(genre: str, rng: np.random.Generator, size: int = 96, confuse: float = 0.25) -> Image.Image:
    """One synthetic cover for ``genre``."""
    palette_name, motif = GENRES[genre]
    if rng.random() < confuse:
        motif = MOTIFS[int(rng.integers(len(MOTIFS)))]
    colours = [_jitter(rng, c) for c in PALETTES[palette_name]]
    order = rng.permutation(len(colours))
    background = colours[int(order[0])]
    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    _draw_motif(draw, motif, size, colours, rng)
    # a "title" bar somewhere, as on real covers
    y = int(rng.integers(0, size - size // 8))
    draw.rectangle([size // 10, y, size - size // 10, y + size // 12], fill=_jitter(rng, colours[int(order[1])], 60))
    im = im.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR, fillcolor=background)
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def generate_demo(out_dir: str | Path, per_class: int = 48, size: int = 96, seed: int = 0) -> Path:
    """Write ``<Genre>.zip`` archives (each holding ``<Genre>/*.png``) into ``out_dir``; deterministic for a seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for g, genre in enumerate(GENRES):
        rng = np.random.default_rng([seed, g])
        tmp = out_dir / f".{genre}.{os.getpid()}.zip"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for i in range(per_class):
                buf = io.BytesIO()
                make_cover(genre, rng, size).save(buf, format="PNG")
                info = zipfile.ZipInfo(f"{genre}/{genre.lower()}_{i:03d}.png", date_time=(2024, 1, 1, 0, 0, 0))
                zf.writestr(info, buf.getvalue())
        os.replace(tmp, out_dir / f"{genre}.zip")
    return out_dir


def ensure_demo(cache_dir: str | Path, per_class: int = 48, size: int = 96, seed: int = 0) -> Path:
    """The demo archives under ``cache_dir``, generated on first use."""
    out = Path(cache_dir) / f"demo-v{DEMO_VERSION}-{per_class}x{size}px-seed{seed}"
    if not all((out / f"{g}.zip").exists() for g in GENRES):
        log.info("generating the synthetic demo data set in %s", out)
        generate_demo(out, per_class, size, seed)
    return out

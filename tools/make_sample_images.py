#!/usr/bin/env python3
"""Writes the small synthetic images in datasets/samples/ that the quickstart DAG reads.

Pure standard library (zlib + struct), so it runs anywhere:  python3 tools/make_sample_images.py
Each image is a coloured "subject" (disc, square, ring, stripes) on a two-tone background, at a
few sizes and aspect ratios, so thumbnails and crops have something to show.
"""
import math
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "datasets" / "samples"


def png(width, height, pixel):
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows.extend(pixel(x, y))
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b"")


def scene(width, height, shape, fg, bg1, bg2):
    cx, cy, r = width / 2, height / 2, min(width, height) / 3
    def pixel(x, y):
        t = y / max(height - 1, 1)
        bg = tuple(int(a * (1 - t) + b * t) for a, b in zip(bg1, bg2))
        dx, dy = x - cx, y - cy
        d = math.hypot(dx, dy)
        inside = {
            "disc": d < r,
            "square": abs(dx) < r * 0.8 and abs(dy) < r * 0.8,
            "ring": r * 0.6 < d < r,
            "stripes": abs(dx) < r and abs(dy) < r and int((x + y) / 8) % 2 == 0,
        }[shape]
        if inside:
            shade = 0.75 + 0.25 * math.cos(d / r * math.pi / 2)
            return bytes(int(c * shade) for c in fg)
        return bytes(bg)
    return png(width, height, pixel)


SUBJECTS = [
    ("red_disc", "disc", (220, 40, 40)),
    ("blue_square", "square", (40, 80, 220)),
    ("green_ring", "ring", (40, 180, 70)),
    ("gold_stripes", "stripes", (230, 180, 30)),
]
SCENES = [
    ("beach", (250, 230, 180), (90, 170, 220), (256, 192)),
    ("forest", (40, 90, 40), (120, 170, 90), (192, 256)),
    ("studio", (245, 245, 245), (200, 200, 200), (224, 224)),
]

if __name__ == "__main__":
    for subject, shape, colour in SUBJECTS:
        folder = OUT / subject
        folder.mkdir(parents=True, exist_ok=True)
        for scene_name, bg1, bg2, (w, h) in SCENES:
            (folder / f"{scene_name}.png").write_bytes(scene(w, h, shape, colour, bg1, bg2))
    print(f"wrote {len(SUBJECTS) * len(SCENES)} images under {OUT}")

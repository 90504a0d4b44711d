"""Built-in procedural street scenes: the project's embedded default data (no files, no download).

:class:`ProceduralStreets` draws Cityscapes-like street scenes with numpy, deterministically per
``(seed, split, index)``. Large smooth regions (sky gradient, road) coexist with small detailed
objects (1-3 px poles, signs, pedestrians), which is what makes a block-based dynamic-resolution
network worthwhile: blocks of sky or road can run at low resolution, blocks with thin objects
need high resolution.

Classes (ids 0..8): sky, road, sidewalk, building, vegetation, pole, sign, car, pedestrian.

All drawing is vectorised: every shape is a boolean mask computed from coordinate comparisons
inside its (clipped) bounding box; there are no per-pixel Python loops. One 256x512 image takes
about 30-40 ms on one CPU core.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CLASSES",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "THIN_CLASSES",
    "ProceduralStreets",
    "generate_scene",
    "thin_object_mask",
    "block_content",
]

CLASSES: tuple[str, ...] = (
    "sky",
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "pole",
    "sign",
    "car",
    "pedestrian",
)
NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = 255
SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, POLE, SIGN, CAR, PEDESTRIAN = range(NUM_CLASSES)
THIN_CLASSES: tuple[int, ...] = (POLE, SIGN, PEDESTRIAN)
SKY_OR_ROAD: tuple[int, ...] = (SKY, ROAD)

# RGB colours (0..255) for visualising labels, in class-id order (Cityscapes-like).
PALETTE: list[tuple[int, int, int]] = [
    (70, 130, 180),  # sky
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (107, 142, 35),  # vegetation
    (153, 153, 153),  # pole
    (220, 220, 0),  # sign
    (0, 0, 142),  # car
    (220, 20, 60),  # pedestrian
]

SPLITS = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------------------------
# noise helpers
# --------------------------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1], shape [h, w]: bilinear interpolation of a random grid with
    one random value every ``cell`` pixels."""
    gh = int(math.ceil(h / cell)) + 2
    gw = int(math.ceil(w / cell)) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    fy = np.arange(h, dtype=np.float32) / cell + rng.random(dtype=np.float32)
    fx = np.arange(w, dtype=np.float32) / cell + rng.random(dtype=np.float32)
    y0 = fy.astype(np.int64)
    x0 = fx.astype(np.int64)
    ty = fy - y0
    tx = fx - x0
    ty = (ty * ty * (3 - 2 * ty))[:, None]  # smoothstep: no visible grid creases
    tx = (tx * tx * (3 - 2 * tx))[None, :]
    # separable: interpolate the grid rows along x, then those rows along y
    a = grid[:, x0]
    rows = a + (grid[:, x0 + 1] - a) * tx  # [gh, w]
    top = rows[y0]
    return top + (rows[y0 + 1] - top) * ty


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3):
    """Sum of value-noise octaves (cell, cell/2, ...), normalised to roughly [0, 1]."""
    out = np.zeros((h, w), dtype=np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += amp * _value_noise(rng, h, w, max(cell, 1.0))
        total += amp
        amp *= 0.5
        cell /= 2
    return out / total


# --------------------------------------------------------------------------------------------
# canvas
# --------------------------------------------------------------------------------------------


class _Canvas:
    """An RGB float image and its label map, with masked, bounding-box-clipped painting."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), dtype=np.float32)
        self.lab = np.zeros((h, w), dtype=np.int64)
        self.yy = np.arange(h, dtype=np.float32)[:, None] + 0.5  # pixel centres
        self.xx = np.arange(w, dtype=np.float32)[None, :] + 0.5

    def paint(self, box, mask_fn, colour, cls: int) -> None:
        """Paint pixels of ``box = (y0, y1, x0, x1)`` (float, clipped to the image) where
        ``mask_fn(ys, xs)`` is True. ``colour`` is an RGB triple, a full-image [H, W, 3] array or
        a callable ``(ys, xs) -> [h, w, 3]``."""
        y0, y1, x0, x1 = box
        y0 = max(int(math.floor(y0)), 0)
        x0 = max(int(math.floor(x0)), 0)
        y1 = min(int(math.ceil(y1)), self.h)
        x1 = min(int(math.ceil(x1)), self.w)
        if y1 <= y0 or x1 <= x0:
            return
        ys = self.yy[y0:y1]
        xs = self.xx[:, x0:x1]
        m = mask_fn(ys, xs)
        m = np.broadcast_to(m, (y1 - y0, x1 - x0))
        if not m.any():
            return
        img = self.img[y0:y1, x0:x1]
        if callable(colour):
            col = np.broadcast_to(colour(ys, xs), img.shape)
            img[m] = col[m]
        else:
            col = np.asarray(colour, dtype=np.float32)
            if col.ndim == 3:
                img[m] = col[y0:y1, x0:x1][m]
            else:
                img[m] = col
        self.lab[y0:y1, x0:x1][m] = cls


def _rect(y0, y1, x0, x1):
    return lambda ys, xs: (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def _ellipse(cy, cx, ry, rx):
    return lambda ys, xs: ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


def _shade(rgb, factor):
    return np.clip(np.asarray(rgb, dtype=np.float32) * factor, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# scene generation
# --------------------------------------------------------------------------------------------


def generate_scene(rng: np.random.Generator, height: int = 256, width: int = 512):
    """Draw one street scene with ``rng``. Returns ``(image float32 [H, W, 3] in [0, 1],
    label int64 [H, W])`` as numpy arrays."""
    H, W = height, width
    cv = _Canvas(H, W)
    yy, xx = cv.yy, cv.xx
    u = rng.uniform

    horizon = H * u(0.40, 0.50)
    vx = W * u(0.38, 0.62)  # vanishing point x
    ground_h = H - horizon

    def depth_scale(y):
        """Perspective scale at ground row y: 0 at the horizon, 1 at the bottom row."""
        return np.clip((y - horizon) / ground_h, 0.0, 1.0)

    # road and sidewalk edges at the bottom row; they meet near the vanishing point
    road_l_b, road_r_b = W * u(-0.05, 0.22), W * u(0.78, 1.05)
    road_top_half = W * u(0.01, 0.025)
    side_w = W * u(0.18, 0.35)

    def edges(y):
        t = depth_scale(y)
        rl = vx - road_top_half + t * (road_l_b - (vx - road_top_half))
        rr = vx + road_top_half + t * (road_r_b - (vx + road_top_half))
        sl = rl - (road_top_half * 0.6 + t * side_w)
        sr = rr + (road_top_half * 0.6 + t * side_w)
        return rl, rr, sl, sr

    # ---- sky: vertical gradient + soft clouds (everything starts as sky) --------------------
    top_col = np.array([u(0.15, 0.35), u(0.35, 0.55), u(0.70, 0.95)], dtype=np.float32)
    hor_col = np.array([u(0.70, 0.90), u(0.78, 0.92), u(0.85, 1.00)], dtype=np.float32)
    t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]  # [H, 1, 1]
    cv.img[:] = top_col + (hor_col - top_col) * t
    hs = min(int(math.ceil(horizon)) + 1, H)  # clouds only where sky can show
    clouds = _value_noise(rng, hs, W, cell=H / 4)
    cloud_amt = np.float32(u(0.0, 0.35))
    cv.img[:hs] += (cloud_amt * np.clip(clouds - 0.5, 0, None))[..., None]
    cv.lab[:] = SKY

    # shared textures
    tex_fine = _fractal_noise(rng, H, W, cell=6.0, octaves=2)  # [H, W] in ~[0, 1]
    tex_coarse = _value_noise(rng, H, W, cell=32.0)

    def textured(base, amount, tex=None):
        base = np.asarray(base, dtype=np.float32)
        tex = tex_fine if tex is None else tex

        def colour(ys, xs):
            y0, x0 = int(ys[0, 0]), int(xs[0, 0])
            patch = tex[y0 : y0 + ys.shape[0], x0 : x0 + xs.shape[1]]
            return np.clip(base * (1.0 + amount * (patch[..., None] - 0.5)), 0, 1)

        return colour

    # ---- buildings along the horizon, with window grids ---------------------------------------
    min_top = 0.14 * H  # keep the top rows sky
    x = u(-0.1, 0.05) * W
    while x < W:
        bw = W * u(0.05, 0.16)
        if u() < 0.15:  # gap: sky shows between buildings
            x += bw * u(0.3, 1.0)
            continue
        btop = max(horizon - H * u(0.08, 0.38), min_top)
        bbot = horizon + 2
        base = np.array([u(0.35, 0.75)] * 3, dtype=np.float32) * np.array(
            [u(0.85, 1.1), u(0.85, 1.0), u(0.8, 1.0)], dtype=np.float32
        )
        base = np.clip(base, 0, 1)
        cv.paint(
            (btop, bbot, x, x + bw), _rect(btop, bbot, x, x + bw), textured(base, 0.3), BUILDING
        )
        # windows: periodic grid of darker / lit rectangles
        px, py = u(5, 11), u(6, 12)
        ww, wh = px * u(0.4, 0.7), py * u(0.4, 0.6)
        win_col = _shade(base, u(0.25, 0.5)) if u() < 0.7 else np.array([0.9, 0.85, 0.55])
        ox, oy, xb, yb = x + u(1, 3), btop + u(2, 4), x + bw - 2, horizon - 3

        def win_mask(ys, xs, ox=ox, oy=oy, xb=xb, yb=yb, px=px, py=py, ww=ww, wh=wh):
            inside = (xs >= ox) & (xs < xb) & (ys >= oy) & (ys < yb)
            return inside & (((xs - ox) % px) < ww) & (((ys - oy) % py) < wh)

        cv.paint((oy, yb, ox, xb), win_mask, win_col, BUILDING)
        x += bw

    # ---- vegetation blobs (tree crowns) along the horizon -------------------------------------
    veg_base = np.array([u(0.15, 0.35), u(0.40, 0.60), u(0.10, 0.25)], dtype=np.float32)
    veg_tex = _value_noise(rng, H, W, cell=4.0)
    blob_noise = tex_fine  # perturbs the blob outlines
    for _ in range(int(rng.integers(2, 7))):
        cx = W * u(0.0, 1.0)
        ry = H * u(0.04, 0.12)
        rx = ry * u(1.0, 2.2)
        cy = max(horizon - ry * u(0.2, 0.9), min_top + ry)

        def blob(ys, xs, cy=cy, cx=cx, ry=ry, rx=rx):
            d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
            y0, x0 = int(ys[0, 0]), int(xs[0, 0])
            nz = blob_noise[y0 : y0 + ys.shape[0], x0 : x0 + xs.shape[1]]
            return d + 0.6 * (nz - 0.5) <= 1.0

        cv.paint(
            (cy - 1.4 * ry, cy + 1.4 * ry, cx - 1.4 * rx, cx + 1.4 * rx),
            blob,
            textured(veg_base * u(0.8, 1.2), 0.9, veg_tex),
            VEGETATION,
        )

    # ---- ground: sides (grass or building facade), sidewalks, road ----------------------------
    gy0 = min(int(math.ceil(horizon - 0.5)), H - 1)  # first row whose centre is below
    ys_g = yy[gy0:]
    rl, rr, sl, sr = edges(ys_g)
    below = ys_g >= horizon
    side_kind = [VEGETATION if u() < 0.5 else BUILDING for _ in range(2)]
    walk_base = np.array([u(0.55, 0.75)] * 3, dtype=np.float32) * np.array([1.0, 0.97, 0.93])
    road_base = np.array([u(0.25, 0.42)] * 3, dtype=np.float32) * np.array([1.0, 1.0, 1.04])
    # regions: 0 left side, 1 right side, 2 sidewalk, 3 road; one composite pass over the rows
    bases, amounts, texs = [], [], []
    for kind in side_kind:
        if kind == VEGETATION:
            bases.append(np.array([0.30, 0.50, 0.18]) * u(0.8, 1.2))
            amounts.append(1.0)
            texs.append(veg_tex)
        else:
            bases.append(np.array([u(0.4, 0.7)] * 3))
            amounts.append(0.4)
            texs.append(tex_coarse)
    bases += [walk_base, road_base]
    amounts += [0.35, 0.15]
    texs += [tex_fine, tex_coarse]
    road_mask = below & (xx >= rl) & (xx < rr)
    rid = np.full((H - gy0, W), 2, dtype=np.intp)
    rid[xx < sl] = 0
    rid[xx >= sr] = 1
    rid[road_mask] = 3
    tex = np.choose(rid, [t[gy0:] for t in texs])
    factor = 1.0 + np.asarray(amounts, dtype=np.float32)[rid] * (tex - 0.5)
    colour = np.clip(np.asarray(bases, dtype=np.float32)[rid] * factor[..., None], 0, 1)
    region_cls = np.array([side_kind[0], side_kind[1], SIDEWALK, ROAD], dtype=np.int64)
    cv.img[gy0:] = colour
    cv.lab[gy0:] = region_cls[rid]
    # kerb line at the road edges (a bit darker, still sidewalk)
    kerb_w = 1.0 + 2.0 * depth_scale(ys_g)
    kerb = below & (((xx >= rl - kerb_w) & (xx < rl)) | ((xx >= rr) & (xx < rr + kerb_w)))
    cv.paint((gy0, H, 0, W), lambda ys, xs: kerb, _shade(walk_base, 0.75), SIDEWALK)

    # lane markings: dashed lines converging to the vanishing point (label: road)
    n_lanes = int(rng.integers(2, 4))
    depth = 1.0 / np.maximum(depth_scale(ys_g), 1e-3)  # ~distance along the road
    dash_period, dash_phase = u(1.5, 3.0), u(0, 1)
    dashes = ((depth / dash_period + dash_phase) % 1.0) < 0.5
    for k in range(1, n_lanes):
        f = k / n_lanes
        cx_line = rl + f * (rr - rl)
        half = 0.3 + 2.0 * depth_scale(ys_g)
        lm = below & road_mask & (np.abs(xx - cx_line) < half) & dashes
        cv.paint((gy0, H, 0, W), lambda ys, xs, lm=lm: lm, np.array([0.92, 0.92, 0.88]), ROAD)

    # ---- objects on the ground, drawn far to near ---------------------------------------------
    objects = []  # (base_y, kind, params)

    def ground_y(min_t=0.05, max_t=1.0):
        t = u(min_t, max_t)
        return horizon + t * ground_h

    for _ in range(int(rng.integers(2, 7))):  # poles on the sidewalks
        by = ground_y(0.05, 0.9)
        _, _, sl_b, sr_b = edges(by)
        rl_b, rr_b = edges(by)[:2]
        if u() < 0.5:
            px = sl_b + u(0.3, 0.9) * (rl_b - sl_b)
        else:
            px = rr_b + u(0.1, 0.7) * (sr_b - rr_b)
        objects.append((by, "pole", float(np.clip(px, 2, W - 5))))  # keep it in view
    for _ in range(int(rng.integers(1, 5))):  # cars on the road
        by = ground_y(0.1, 1.0)
        rl_b, rr_b = edges(by)[:2]
        objects.append((by, "car", rl_b + u(0.05, 0.75) * (rr_b - rl_b)))
    for _ in range(int(rng.integers(2, 7))):  # pedestrians on the sidewalks (some crossing)
        by = ground_y(0.05, 0.85)
        rl_b, rr_b, sl_b, sr_b = edges(by)
        r = u()
        if r < 0.45:
            px = sl_b + u(0.1, 0.9) * (rl_b - sl_b)
        elif r < 0.9:
            px = rr_b + u(0.1, 0.9) * (sr_b - rr_b)
        else:
            px = rl_b + u(0.1, 0.9) * (rr_b - rl_b)
        objects.append((by, "ped", px))
    objects.sort(key=lambda o: o[0])

    for by, kind, px in objects:
        s = float(depth_scale(by))
        if kind == "pole":
            _draw_pole(cv, rng, by, px, s, H, min_top)
        elif kind == "car":
            _draw_car(cv, rng, by, px, s, W)
        else:
            _draw_pedestrian(cv, rng, by, px, s, H)

    # ---- global illumination jitter and pixel noise -------------------------------------------
    img = cv.img
    img *= np.float32(u(0.85, 1.1))
    img += np.float32(u(-0.04, 0.04))
    # sensor noise: luminance (shared by the channels) plus a weaker per-channel part; uniform
    # rather than Gaussian because it is several times cheaper to draw
    lum = rng.random((H, W, 1), dtype=np.float32) - 0.5
    img += np.float32(u(0.02, 0.06)) * lum
    img += np.float32(u(0.01, 0.03)) * (rng.random(img.shape, dtype=np.float32) - 0.5)
    np.clip(img, 0.0, 1.0, out=img)
    return img.astype(np.float32, copy=False), cv.lab


def _draw_pole(cv: _Canvas, rng, by, px, s, H, min_top):
    u = rng.uniform
    pw = float(np.clip(round(1 + 2 * s + u(-0.4, 0.4)), 1, 3))  # 1..3 px wide
    ph = H * (0.12 + 0.55 * s) * u(0.85, 1.15)
    top = max(by - ph, min_top * u(0.8, 1.0))
    x0 = math.floor(px)
    col = _shade(np.array([0.45, 0.45, 0.48]), u(0.6, 1.3))
    cv.paint((top, by, x0, x0 + pw), _rect(top, by, x0, x0 + pw), col, POLE)
    # a sign attached near the top: rectangle or disc, 4..~20 px
    if u() < 0.85:
        sz = max(4.0, (4 + 16 * s) * u(0.8, 1.2))
        side = 1 if u() < 0.5 else -1
        cy = top + sz * u(0.5, 1.5)
        cx = px + side * (pw / 2 + sz / 2) if u() < 0.5 else px + pw / 2
        palette = ([0.85, 0.1, 0.1], [0.1, 0.3, 0.8], [0.95, 0.85, 0.1], [0.95, 0.95, 0.95])
        col = np.array(palette[int(rng.integers(len(palette)))], dtype=np.float32)
        box = (cy - sz / 2, cy + sz / 2, cx - sz / 2, cx + sz / 2)
        if u() < 0.5:
            cv.paint(box, _ellipse(cy, cx, sz / 2, sz / 2), col, SIGN)
            inner = _ellipse(cy, cx, sz / 2 * 0.6, sz / 2 * 0.6)
            cv.paint(box, inner, np.array([0.95, 0.95, 0.95]), SIGN)
        else:
            cv.paint(box, _rect(*box), col, SIGN)
            b = max(1.0, sz * 0.15)
            cv.paint(box, _rect(box[0] + b, box[1] - b, box[2] + b, box[3] - b), col * 0.6, SIGN)


def _draw_car(cv: _Canvas, rng, by, px, s, W):
    u = rng.uniform
    cw = max(8.0, W * (0.02 + 0.30 * s) * u(0.85, 1.15))
    ch = cw * u(0.45, 0.6)
    x0, x1, y1 = px - cw / 2, px + cw / 2, by
    y0 = by - ch
    body = np.array([u(0, 1), u(0, 1), u(0, 1)], dtype=np.float32) * u(0.4, 1.0)
    cab_y = y0 + ch * 0.45  # lower body below, cabin above
    cv.paint((cab_y, y1 - ch * 0.1, x0, x1), _rect(cab_y, y1 - ch * 0.1, x0, x1), body, CAR)
    inset = cw * u(0.1, 0.2)
    cab = _rect(y0, cab_y, x0 + inset, x1 - inset)
    cv.paint((y0, cab_y, x0 + inset, x1 - inset), cab, _shade(body, 0.9), CAR)
    # windows (dark glass) inside the cabin
    g = max(1.0, ch * 0.07)
    glass = np.array([0.12, 0.15, 0.2], dtype=np.float32)
    win = _rect(y0 + g, cab_y - 0.5, x0 + inset + g, x1 - inset - g)
    cv.paint((y0, cab_y, x0, x1), win, glass, CAR)
    # lights and wheels
    lw = max(1.0, cw * 0.1)
    lh = max(1.0, ch * 0.1)
    ly = cab_y + ch * 0.1
    for lx in (x0 + 1, x1 - 1 - lw):
        cv.paint((ly, ly + lh, lx, lx + lw), _rect(ly, ly + lh, lx, lx + lw), [0.95, 0.2, 0.1], CAR)
    wr = max(1.5, ch * 0.17)
    for wx in (x0 + cw * 0.22, x1 - cw * 0.22):
        wy = y1 - wr * 0.8
        box = (wy - wr, wy + wr, wx - wr, wx + wr)
        cv.paint(box, _ellipse(wy, wx, wr, wr), [0.05, 0.05, 0.05], CAR)


def _draw_pedestrian(cv: _Canvas, rng, by, px, s, H):
    u = rng.uniform
    ph = max(7.0, H * (0.03 + 0.30 * s) * u(0.85, 1.15))
    head_r = max(1.0, ph * 0.08)
    bw = max(1.5, ph * 0.16)
    shirt = np.array([u(0, 1), u(0, 1), u(0, 1)], dtype=np.float32)
    trousers = np.array([u(0, 0.4), u(0, 0.4), u(0.1, 0.5)], dtype=np.float32)
    skin = np.array([u(0.45, 0.95), u(0.35, 0.75), u(0.25, 0.6)], dtype=np.float32)
    top = by - ph
    torso_y0, torso_y1 = top + 2 * head_r, top + ph * 0.55
    # legs: two thin strips, slightly apart (walking)
    lw = max(1.0, bw * 0.4)
    spread = u(0.0, 0.4) * bw
    for lx in (px - bw / 2 - spread / 2, px + bw / 2 - lw + spread / 2):
        cv.paint(
            (torso_y1, by, lx, lx + lw), _rect(torso_y1, by, lx, lx + lw), trousers, PEDESTRIAN
        )
    torso = _rect(torso_y0, torso_y1, px - bw / 2, px + bw / 2)
    cv.paint((torso_y0, torso_y1, px - bw / 2, px + bw / 2), torso, shirt, PEDESTRIAN)
    hy = top + head_r
    box = (hy - head_r, hy + head_r, px - head_r, px + head_r)
    cv.paint(box, _ellipse(hy, px, head_r, head_r), skin, PEDESTRIAN)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------


class ProceduralStreets(Dataset):
    """Procedural street scenes, generated on the fly (map-style dataset, no files).

    ``dataset[i]`` is ``(image, label)``: ``image`` float32 ``[3, H, W]`` in [0, 1], ``label``
    int64 ``[H, W]`` with class ids ``0 .. NUM_CLASSES-1`` (see :data:`CLASSES`). Sample ``i`` is
    a pure function of ``(seed, split, i)``: its numpy generator is seeded from
    ``SeedSequence([seed, split_id, i])``, so splits ("train", "val", "test") never share a scene
    and any worker/order gives the same data. ``transform(image, label) -> (image, label)`` is
    applied last if given.
    """

    classes = CLASSES
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        num_images: int,
        height: int = 256,
        width: int = 512,
        seed: int = 0,
        split: str = "train",
        transform: Callable | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if height < 32 or width < 32:
            raise ValueError(f"image must be at least 32x32, got {height}x{width}")
        self.num_images = int(num_images)
        self.height, self.width = int(height), int(width)
        self.seed, self.split = int(seed), split
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], int(index)])

    def __getitem__(self, index: int):
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        img, lab = generate_scene(self.generator(index), self.height, self.width)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        label = torch.from_numpy(lab)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


# --------------------------------------------------------------------------------------------
# label analysis helpers
# --------------------------------------------------------------------------------------------


def _as_numpy_label(label) -> np.ndarray:
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {label.shape}")
    return label


def thin_object_mask(label) -> np.ndarray:
    """Bool ``[H, W]``: pixels of thin/small objects (pole, sign, pedestrian).
    ``label`` is an int ``[H, W]`` numpy array or tensor."""
    return np.isin(_as_numpy_label(label), THIN_CLASSES)


def block_content(label, block_size: int) -> dict[str, np.ndarray]:
    """Per-block content of a label map, on the ``ceil(H/bs) x ceil(W/bs)`` block grid.

    Returns bool grids ``[GH, GW]``:

    - ``thin``: the block contains at least one pole, sign or pedestrian pixel;
    - ``only_sky_or_road``: every (non-ignored) pixel of the block is sky or road.

    Edge blocks of a size that is not a multiple of ``block_size`` are judged on their valid
    pixels; ``IGNORE_INDEX`` pixels count for neither.
    """
    lab = _as_numpy_label(label)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    H, W = lab.shape
    GH, GW = -(-H // block_size), -(-W // block_size)
    ph, pw = GH * block_size - H, GW * block_size - W
    thin = np.isin(lab, THIN_CLASSES)
    ok = np.isin(lab, SKY_OR_ROAD) | (lab == IGNORE_INDEX)
    thin = np.pad(thin, ((0, ph), (0, pw)), constant_values=False)
    ok = np.pad(ok, ((0, ph), (0, pw)), constant_values=True)
    shape = (GH, block_size, GW, block_size)
    return {
        "thin": thin.reshape(shape).any(axis=(1, 3)),
        "only_sky_or_road": ok.reshape(shape).all(axis=(1, 3)),
    }

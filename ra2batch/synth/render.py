"""Rasterise a limb model into a radiograph: pose, bones, soft tissue, exposure, blur and noise.

Attenuation adds up along the beam, so overlapping bones (carpals, sesamoids) look brighter, and
the detector value is ``1 - exp(-exposure * attenuation)``: bone bright on a dark background as in
RA2's JPEGs. Each bone is evaluated only inside its own bounding box, which keeps a 2-megapixel
radiograph at a fraction of a second on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .anatomy import FLARE, Blob, LimbModel, LongBone, build_limb

#: Long side of a radiograph in pixels at scale 1 (RA2's JPEGs are roughly this size).
LONG_SIDE_PX = (1000, 2500)
#: Margin added around the outline points of a detector box (mm).
BOX_MARGIN_MM = 3.0


@dataclass(frozen=True)
class Pose:
    """Placement of the limb on the detector: ``px = px_per_mm * R(angle) @ mm + offset``."""

    px_per_mm: float
    angle: float  # radians, positive turns +x towards +y
    offset: np.ndarray
    width: int
    height: int

    @property
    def rotation(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.array([[c, -s], [s, c]])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 2) in mm to pixel coordinates (x, y), pixel centres at integers."""
        return self.px_per_mm * (points @ self.rotation.T) + self.offset


@dataclass
class RenderedLimb:
    """One radiograph and where its joints and detector boxes are, in its own pixels.

    ``pixels`` float32 H x W in [0, 1]; ``joints`` column -> (x, y); ``axes`` column -> unit
    vector across the joint space; ``boxes`` detector class -> (x0, y0, x1, y1).
    """

    limb: str
    pixels: np.ndarray
    joints: dict[str, tuple[float, float]]
    axes: dict[str, tuple[float, float]]
    boxes: dict[str, tuple[float, float, float, float]]
    px_per_mm: float

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def render_limb(limb: str, scores: dict[str, int], entropy: tuple[int, ...], scale: float = 1.0,
                marker_probability: float = 0.35) -> RenderedLimb:
    """Render one radiograph of ``limb`` showing ``scores`` (its columns; missing = 0).

    ``entropy`` seeds three independent streams (anatomy and pose, erosion shapes, image noise),
    so the same entropy with other scores shows the same limb in the same place.
    """
    anatomy_rng, damage_rng, image_rng = (np.random.default_rng([*entropy, k]) for k in range(3))
    model = build_limb(limb, scores, anatomy_rng, damage_rng)
    pose = sample_pose(model, anatomy_rng, scale)
    pixels = rasterise(model, pose, image_rng)
    joints = {c: tuple(map(float, pose.apply(p))) for c, (p, _) in model.joints.items()}
    axes = {c: tuple(map(float, pose.rotation @ a)) for c, (_, a) in model.joints.items()}
    margin = BOX_MARGIN_MM * pose.px_per_mm
    boxes = {}
    for name, pts in model.boxes.items():
        px = pose.apply(pts)
        x0, y0 = np.maximum(px.min(0) - margin, 0)
        x1, y1 = np.minimum(px.max(0) + margin, [pose.width - 1, pose.height - 1])
        boxes[name] = (float(x0), float(y0), float(x1), float(y1))
    if limb[0] == "R":  # right limbs are mirror images of the canonical left one
        pixels = pixels[:, ::-1]
        w1 = pose.width - 1
        joints = {c: (w1 - x, y) for c, (x, y) in joints.items()}
        axes = {c: (-ax, ay) for c, (ax, ay) in axes.items()}
        boxes = {k: (w1 - x1, y0, w1 - x0, y1) for k, (x0, y0, x1, y1) in boxes.items()}
    pixels = np.ascontiguousarray(pixels)
    if image_rng.random() < marker_probability:
        _burn_marker(pixels, limb[0], list(boxes.values()), pose.px_per_mm, image_rng)
    return RenderedLimb(limb, pixels, joints, axes, boxes, pose.px_per_mm)


def sample_pose(model: LimbModel, rng: np.random.Generator, scale: float) -> Pose:
    """Random size, orientation (portrait mostly), rotation up to 20 degrees and position.

    The detector-box outlines always fit inside the image; the forearm or heel may be cut off.
    """
    angle = np.radians(float(np.clip(rng.normal(0, 8), -20, 20)))
    long_side = rng.uniform(*LONG_SIDE_PX) * scale
    aspect = rng.uniform(0.74, 0.86)
    landscape = rng.random() < 0.15
    width, height = (long_side, long_side * aspect) if landscape else (long_side * aspect, long_side)
    width, height = int(round(width)), int(round(height))
    pts = np.concatenate([*model.boxes.values(), model.extent])
    c, s = np.cos(angle), np.sin(angle)
    turned = pts @ np.array([[c, -s], [s, c]]).T
    lo, hi = turned.min(0) - 2 * BOX_MARGIN_MM, turned.max(0) + 2 * BOX_MARGIN_MM
    extent = hi - lo
    fill = rng.uniform(0.72, 0.92)
    px_per_mm = fill * min(width / extent[0], height / extent[1])
    free = np.array([width, height]) - px_per_mm * extent
    offset = free * rng.uniform(0.15, 0.85, size=2) - px_per_mm * lo
    return Pose(float(px_per_mm), float(angle), offset, width, height)


# ----------------------------------------------------------------------------------------------
# Bones

def _window(centre_px: np.ndarray, reach: np.ndarray, pose: Pose) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(centre_px - reach).astype(int)
    x1, y1 = np.ceil(centre_px + reach).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, pose.width), min(y1, pose.height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


#: Texture code t (uint8) -> medullary attenuation 0.42 * (1 + 0.16 * (t - 128) / 40).
_TEXTURE_GAIN, _TEXTURE_OFFSET = 0.42 * 0.004, 0.42 * (1 - 0.512)


def _bone_profile(d: np.ndarray, across: np.ndarray, cortex: np.ndarray | float, texture: np.ndarray,
                  density: float, edge: float) -> np.ndarray:
    """Attenuation from the depth ``d`` (px inside the outline): bright cortical rim, textured interior.

    ``across`` is 0 on the axis and 1 at the outline (a tube is thicker in the middle); ``edge``
    (px) is the width of the outline's ramp, the detector's blur.
    """
    inside = np.clip(d / np.float32(edge) + 0.5, 0.0, 1.0)
    rim = np.clip((cortex - d) / (0.6 * cortex), 0.0, 1.0)
    tube = np.sqrt(np.clip(1.0 - across * across, 0.0, 1.0))
    interior = (0.7 + 0.3 * tube) * (texture * np.float32(_TEXTURE_GAIN) + np.float32(_TEXTURE_OFFSET))
    return density * inside * (interior + (1.1 - interior) * rim)


def _carve(att: np.ndarray, x0: int, y0: int, defects, pose: Pose, edge: float) -> None:
    """Erosions: each defect disc loses most of its density, with an ``edge`` px ramp (in place)."""
    for defect in defects:
        c = pose.apply(defect.centre)
        r = defect.radius * pose.px_per_mm
        cx, cy = c[0] - x0, c[1] - y0
        xa, ya = max(int(cx - r - 2), 0), max(int(cy - r - 2), 0)
        xb, yb = min(int(cx + r + 3), att.shape[1]), min(int(cy + r + 3), att.shape[0])
        if xb <= xa or yb <= ya:
            continue
        xs = np.arange(xa, xb, dtype=np.float32) - cx
        ys = (np.arange(ya, yb, dtype=np.float32) - cy)[:, None]
        hole = np.clip((r - np.sqrt(xs * xs + ys * ys)) / np.float32(edge) + 0.5, 0.0, 1.0)
        att[ya:yb, xa:xb] *= 1.0 - 0.8 * hole


def _draw_long_bone(b: LongBone, pose: Pose, texture: np.ndarray, out: np.ndarray, edge: float) -> None:
    s = pose.px_per_mm
    p0 = pose.apply(b.base)
    d = pose.rotation @ b.direction
    n = np.array([-d[1], d[0]])
    L, hw = b.length * s, max(b.base_hw, b.shaft_hw, b.head_hw) * s + 2
    mid = p0 + d * L / 2
    reach = np.abs(d) * (L / 2 + 2) + np.abs(n) * hw
    win = _window(mid, reach, pose)
    if win is None:
        return
    x0, y0, x1, y1 = win
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(p0[0])
    ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(p0[1]))[:, None]
    u = xs * np.float32(d[0]) + ys * np.float32(d[1])
    v = xs * np.float32(n[0]) + ys * np.float32(n[1])
    t = u / np.float32(L)
    fb = np.clip(1 - t / FLARE, 0, 1) ** 2
    fh = np.clip(1 - (1 - t) / FLARE, 0, 1) ** 2
    w = np.float32(b.shaft_hw * s) + np.float32((b.base_hw - b.shaft_hw) * s) * fb \
        + np.float32((b.head_hw - b.shaft_hw) * s) * fh
    av = np.abs(v)
    ab = np.minimum(av / np.float32(b.base_hw * s), 1)
    ah = np.minimum(av / np.float32(b.head_hw * s), 1)
    u_base = np.float32(b.base_depth * s) * (1 - ab * ab)
    u_head = np.float32(L) - np.float32(b.head_depth * s) * ah * ah + np.float32(b.head_tilt) * v
    depth = np.minimum(np.minimum(w - av, u - u_base), u_head - u)
    cortex = np.float32(b.cortex * s) * (1 - 0.55 * np.maximum(fb, fh)) + 0.8
    att = _bone_profile(depth, av / np.maximum(w, 1), cortex, texture[y0:y1, x0:x1], b.density, edge)
    _carve(att, x0, y0, b.defects, pose, edge)
    out[y0:y1, x0:x1] += att


def _draw_blob(b: Blob, pose: Pose, texture: np.ndarray, out: np.ndarray, edge: float) -> None:
    s = pose.px_per_mm
    c = pose.apply(b.centre)
    reach_mm = max(b.a, b.b) + max([d for _, d in b.bumps] + [0]) + 1
    win = _window(c, np.array([reach_mm * s, reach_mm * s]), pose)
    if win is None:
        return
    x0, y0, x1, y1 = win
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(c[0])
    ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(c[1]))[:, None]
    ang = b.angle + pose.angle
    ca, sa = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    lx, ly = ca * xs + sa * ys, -sa * xs + ca * ys
    dist = np.sqrt(xs * xs + ys * ys) + np.float32(1e-3)
    p = np.float32(b.power)
    rel = (np.abs(lx / np.float32(b.a * s)) ** p + np.abs(ly / np.float32(b.b * s)) ** p) ** (1 / p)
    outline = dist / np.maximum(rel, np.float32(1e-3))  # centre-to-outline distance along each ray
    R = pose.rotation
    for u, delta in b.bumps:
        ur = R @ u
        cos = np.clip((xs * np.float32(ur[0]) + ys * np.float32(ur[1])) / dist, 0, 1)
        outline = outline + np.float32(delta * s) * cos ** 6
    depth = outline - dist
    att = _bone_profile(depth, dist / np.maximum(outline, 1), np.float32(b.cortex * s + 0.8),
                        texture[y0:y1, x0:x1], b.density, edge)
    _carve(att, x0, y0, b.defects, pose, edge)
    out[y0:y1, x0:x1] += att


# ----------------------------------------------------------------------------------------------
# Whole image

def _texture(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """Trabecular texture as uint8 codes (see ``_TEXTURE_GAIN``): a smooth random field, features
    about ``cell`` px wide; 8 bits keep this whole-image field cheap to upsample."""
    h, w = shape
    grid = (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))
    small = np.clip(np.round(128 + 40 * rng.standard_normal(grid)), 0, 255)
    return np.asarray(Image.fromarray(small.astype(np.uint8), "L").resize((w, h), Image.BICUBIC))


def _soft_tissue(model: LimbModel, pose: Pose) -> np.ndarray:
    """Soft-tissue thickness as uint8 (200 = full): outline drawn at 1/4 size, blurred, upsampled."""
    f = 4
    w, h = pose.width // f + 1, pose.height // f + 1
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, width in model.tissue:
        xy = [tuple(p) for p in pose.apply(pts) / f]
        if width == 0:
            draw.polygon(xy, fill=200)
        else:
            draw.line(xy, fill=200, width=max(1, int(width * pose.px_per_mm / f)), joint="curve")
            r = width * pose.px_per_mm / f / 2
            for x, y in (xy[0], xy[-1]):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=200)
    sharp = canvas.filter(ImageFilter.GaussianBlur(1.2 * pose.px_per_mm / f))
    wide = canvas.filter(ImageFilter.GaussianBlur(6.0 * pose.px_per_mm / f))
    return np.asarray(Image.blend(sharp, wide, 0.45).resize((pose.width, pose.height), Image.BILINEAR))


def rasterise(model: LimbModel, pose: Pose, rng: np.random.Generator) -> np.ndarray:
    """float32 H x W in [0, 1]: bones and soft tissue, exposure, heel-effect ramp and noise.

    Detector blur is built into the bones' edge ramps (1-2 px) rather than filtered afterwards,
    which keeps the whole-image work to a handful of array passes.
    """
    shape = (pose.height, pose.width)
    texture = _texture(shape, max(2.0, 1.2 * pose.px_per_mm), rng)
    edge = rng.uniform(1.0, 2.2) * min(1.0, pose.px_per_mm / 5.0) + 0.3
    img = np.zeros(shape, np.float32)
    for b in model.bones:
        (_draw_blob if isinstance(b, Blob) else _draw_long_bone)(b, pose, texture, img, edge)
    tissue = _soft_tissue(model, pose)
    img += tissue * np.float32(0.15 / 200 * rng.uniform(0.8, 1.2))
    img *= np.float32(-rng.uniform(1.4, 2.1))
    np.exp(img, out=img)  # img = transmitted fraction
    floor = rng.uniform(0.02, 0.07)
    tilt = rng.uniform(-0.03, 0.03, size=2) / np.array(shape[::-1])
    ramp_x = np.float32(floor + 1 - floor) + np.arange(shape[1], dtype=np.float32) * np.float32(tilt[0])
    ramp_y = np.arange(shape[0], dtype=np.float32)[:, None] * np.float32(tilt[1])
    img *= np.float32(-(1 - floor))
    img += ramp_x
    img += ramp_y  # img = floor + ramp + (1 - floor) * (1 - transmitted)
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0.004, 0.011))
    img += noise
    return np.clip(img, 0.0, 1.0, out=img)


def _burn_marker(pixels: np.ndarray, side: str, boxes: list, px_per_mm: float, rng: np.random.Generator) -> None:
    """A lead side marker ("L"/"R") burned into a free corner, as technologists place them (in place)."""
    size = int(max(12, 14 * px_per_mm))
    h, w = pixels.shape
    pad = int(0.03 * min(h, w))
    corners = [(pad, pad), (w - pad - size, pad), (pad, h - pad - size), (w - pad - size, h - pad - size)]
    start = int(rng.integers(len(corners)))
    for k in range(len(corners)):
        x, y = corners[(start + k) % len(corners)]
        if x < 0 or y < 0:
            return
        if all(x + size < bx0 or x > bx1 or y + size < by0 or y > by1 for bx0, by0, bx1, by1 in boxes):
            mark = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(mark)
            draw.rectangle((0, 0, size - 1, size - 1), outline=255, width=max(1, size // 12))
            font = ImageFont.load_default(size=int(size * 0.75))
            draw.text((size / 2, size / 2), side, fill=255, font=font, anchor="mm")
            patch = pixels[y:y + size, x:x + size]
            np.maximum(patch, np.asarray(mark, np.float32) / 255 * np.float32(0.93), out=patch)
            return

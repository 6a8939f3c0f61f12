"""Hand and foot skeletons in millimetres, with the SvH damage of one limb built into the bones.

A model is built for the canonical **left** limb as seen on a PA/DP radiograph: fingers or toes up
(negative y), thumb or big toe on the right (+x). Right limbs are rendered from the same model and
mirrored. Joint centres and the detector boxes do not depend on the scores: narrowing moves the
articular surfaces towards a fixed joint centre, erosion adds cortical defects to the bones.

Normal joint spaces are wider than in life (~3% of a finger ray) so that a ray cropped and resized
to ~100 px still shows them; one narrowing point takes away a quarter of the normal width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..catalogue import WRIST_EROSION_SITES, joints_for

#: Normal joint-space widths (mm).
GAP_MCP, GAP_PIP, GAP_DIP, GAP_WRIST, GAP_MTP, GAP_TOE = 4.0, 3.4, 2.6, 2.6, 3.4, 2.2
#: Fraction of a tubular bone's length over which each end flares from the shaft to its end width.
FLARE = 0.3


@dataclass
class Defect:
    """An erosion: a disc (centre, radius in mm) where the bone loses most of its density."""

    centre: np.ndarray
    radius: float


@dataclass
class LongBone:
    """A tubular bone: tapered shaft, wider ends, concave base and convex head (mm).

    ``base`` is the centre of the proximal end at the rim of its articular surface; the base
    surface is recessed by ``base_depth`` at its centre (concave), the head surface at ``length``
    bulges by ``head_depth`` (convex) and tilts by ``head_tilt`` mm per mm across the bone.
    """

    name: str
    base: np.ndarray
    direction: np.ndarray
    length: float
    base_hw: float
    shaft_hw: float
    head_hw: float
    base_depth: float
    head_depth: float
    head_tilt: float = 0.0
    density: float = 1.0
    cortex: float = 1.1
    defects: list[Defect] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        return np.array([-self.direction[1], self.direction[0]])

    @property
    def head(self) -> np.ndarray:
        return self.base + self.length * self.direction

    def at(self, u: float, v: float) -> np.ndarray:
        """The point ``u`` mm along the axis and ``v`` mm across it."""
        return self.base + u * self.direction + v * self.normal

    def half_width(self, u: float) -> float:
        t = u / self.length
        fb = np.clip(1 - t / FLARE, 0, 1) ** 2
        fh = np.clip(1 - (1 - t) / FLARE, 0, 1) ** 2
        return float(self.shaft_hw + (self.base_hw - self.shaft_hw) * fb + (self.head_hw - self.shaft_hw) * fh)

    def head_surface(self, v: float) -> float:
        """Axial position (mm) of the distal articular surface ``v`` mm off the axis."""
        a = min(abs(v) / self.head_hw, 1.0)
        return self.length - self.head_depth * a * a + self.head_tilt * v

    def base_surface(self, v: float) -> float:
        a = min(abs(v) / self.base_hw, 1.0)
        return self.base_depth * (1 - a * a)


@dataclass
class Blob:
    """A carpal or tarsal bone: a superellipse (semi-axes ``a``, ``b`` mm, turned by ``angle`` rad)
    whose outline is pushed out by ``bumps`` (unit direction, mm) where a joint narrows."""

    name: str
    centre: np.ndarray
    a: float
    b: float
    angle: float = 0.0
    density: float = 0.95
    cortex: float = 0.8
    power: float = 2.6  # superellipse exponent: 2 = ellipse, larger = squarer
    bumps: list[tuple[np.ndarray, float]] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)

    def radius(self, direction: np.ndarray) -> float:
        """Distance (mm) from the centre to the outline along a unit ``direction``."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        x, y = c * direction[0] + s * direction[1], -s * direction[0] + c * direction[1]
        r = 1.0 / (abs(x / self.a) ** self.power + abs(y / self.b) ** self.power) ** (1 / self.power)
        return float(r + sum(d * max(0.0, float(np.dot(u, direction))) ** 6 for u, d in self.bumps))


Bone = LongBone | Blob


@dataclass
class LimbModel:
    """Bones, joint sites, detector-box outlines and soft-tissue outline of one limb (mm).

    ``joints`` maps an RA2 column to (centre, unit axis across the joint space); ``boxes`` maps a
    detector class to the points its box must enclose; ``tissue`` lists strokes ``(points,
    width_mm)`` (``width_mm`` 0 = filled polygon); ``extent`` are further points the radiograph
    must show (the midfoot).
    """

    kind: str
    bones: list[Bone]
    joints: dict[str, tuple[np.ndarray, np.ndarray]]
    boxes: dict[str, np.ndarray]
    tissue: list[tuple[np.ndarray, float]]
    extent: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def _unit(deg: float) -> np.ndarray:
    """Direction ``deg`` degrees from straight up (-y), positive towards +x."""
    r = np.radians(deg)
    return np.array([np.sin(r), -np.cos(r)])


@dataclass
class _Segment:
    name: str
    length: float
    angle: float
    widths: tuple[float, float, float]  # base, shaft, head half-widths
    gap_after: float  # normal joint space after this bone (0 = last bone of the ray)


def _chain(start: np.ndarray, segments: list[_Segment], gaps: list[float], tip_round: float,
           density: float) -> tuple[list[LongBone], list[tuple[np.ndarray, np.ndarray]]]:
    """Bones of one ray laid end to end; ``gaps`` are the actual joint spaces (mm).

    Joint centres sit where the normal gaps put them, so they do not move with the scores; a
    narrowed joint lengthens the bones on either side towards its centre.
    Returns the bones and each joint's (centre, axis).
    """
    bones: list[LongBone] = []
    joints: list[tuple[np.ndarray, np.ndarray]] = []
    nominal = surface = start.astype(float)  # centre of this bone's base surface (normal / actual)
    for i, seg in enumerate(segments):
        d = _unit(seg.angle)
        if joints:
            centre, g0p, gp = joints[-1][0], segments[i - 1].gap_after, gaps[i - 1]
            nominal, surface = centre + (g0p / 2) * d, centre + (gp / 2) * d
        base_hw, shaft_hw, head_hw = seg.widths
        last = i == len(segments) - 1
        head = nominal + seg.length * d
        if not last:
            centre = head + (seg.gap_after / 2) * d
            head = centre - (gaps[i] / 2) * d
            nd = _unit(segments[i + 1].angle)
            joints.append((centre, (d + nd) / np.linalg.norm(d + nd)))
        base_depth = 0.0 if i == 0 else 0.3 * base_hw * base_hw / segments[i - 1].widths[2]
        head_depth = tip_round * head_hw if last else 0.32 * head_hw
        length = float((head - surface) @ d) + base_depth
        bones.append(LongBone(seg.name, surface - base_depth * d, d, length, base_hw, shaft_hw, head_hw,
                              base_depth, head_depth, density=density, cortex=max(0.6, 0.22 * shaft_hw)))
    return bones, joints


def narrowed(normal_gap: float, score: int) -> float:
    """Joint space (mm) for a narrowing score 0..4: 4 = ankylosis, the surfaces overlap slightly."""
    return normal_gap * (4 - score) / 4 if score < 4 else -0.15 * normal_gap


def erode_joint(proximal: LongBone, distal: LongBone, score: float, rng: np.random.Generator,
                size: float = 1.0, count: int | None = None) -> None:
    """Carve ``count`` (default ``score``) marginal and subchondral defects on both sides of a joint.

    Radii grow with ``score`` (0.9 mm + 0.35 mm per point, times ``size``), so the bone missing
    at the joint grows with both the number and the size of the defects.
    """
    n = int(round(score)) if count is None else count
    places = [(proximal, 1), (distal, -1), (proximal, -1), (distal, 1), (proximal, 0), (distal, 0)]
    for k in range(n):
        bone, side = places[k % len(places)]
        r = size * (0.9 + 0.35 * score) * rng.uniform(0.8, 1.15) / (1 + 0.25 * (k // len(places)))
        back = rng.uniform(0.4, 2.5) + 0.5 * r
        if bone is proximal:
            u = bone.head_surface(0.0) - back
        else:
            u = bone.base_surface(0.0) + back
        if side == 0:
            v = rng.uniform(-0.4, 0.4) * bone.half_width(u)
            u = bone.head_surface(v) - 0.3 * r if bone is proximal else bone.base_surface(v) + 0.3 * r
        else:
            v = side * (bone.half_width(u) - 0.25 * r)
        bone.defects.append(Defect(bone.at(u, v), r))


def erode_outline(bone: Bone, score: int, rng: np.random.Generator, at_head: bool = True) -> None:
    """Wrist erosion: ``score`` defects on the outline of a carpal, or near one end of a long bone."""
    for _ in range(score):
        r = (0.8 + 0.3 * score) * rng.uniform(0.8, 1.15)
        if isinstance(bone, Blob):
            t = rng.uniform(0, 2 * np.pi)
            u = np.array([np.cos(t), np.sin(t)])
            p = bone.centre + (bone.radius(u) - 0.25 * r) * u
        else:
            back = rng.uniform(0.5, 8.0)
            u_ax = bone.head_surface(0.0) - back if at_head else bone.base_surface(0.0) + back
            side = rng.choice([-1, 1])
            p = bone.at(u_ax, side * (bone.half_width(u_ax) - 0.25 * r))
        bone.defects.append(Defect(p, r))


# ----------------------------------------------------------------------------------------------
# Gaps between carpals and their neighbours

def _blob_gap(a: Blob, b: Blob) -> tuple[float, np.ndarray, np.ndarray]:
    """Gap along the centre line between two blobs, its midpoint and direction a -> b."""
    d = b.centre - a.centre
    dist = float(np.linalg.norm(d))
    u = d / dist
    ra, rb = a.radius(u), b.radius(-u)
    gap = dist - ra - rb
    return gap, a.centre + (ra + gap / 2) * u, u


def _set_blob_gap(a: Blob, b: Blob, gap: float) -> np.ndarray:
    """Push both outlines so their gap along the centre line becomes ``gap``; returns the joint centre."""
    g0, mid, u = _blob_gap(a, b)
    a.bumps.append((u, (g0 - gap) / 2))
    b.bumps.append((-u, (g0 - gap) / 2))
    return mid


def _set_bone_gap(blob: Blob, bone: LongBone, gap: float, at_head: bool) -> np.ndarray:
    """Push a blob's outline along a long bone's axis so it lies ``gap`` from the bone's end surface."""
    d = bone.direction
    towards = -d if at_head else d  # from the blob towards the bone's surface
    q = blob.centre + blob.radius(towards) * towards
    rel = q - bone.base
    u, v = float(rel @ d), float(rel @ bone.normal)
    g0 = (u - bone.head_surface(v)) if at_head else (bone.base_surface(v) - u)
    blob.bumps.append((towards, g0 - gap))
    surface = bone.at(bone.head_surface(v) if at_head else bone.base_surface(v), v)
    return surface - towards * (gap / 2)


# ----------------------------------------------------------------------------------------------
# Hand

_HAND_DIGITS = {  # digit: MC base (x, y), MC angle, abduction, lengths MC/PP/MP/DP, width scale
    2: ((10.0, -31.0), 5.0, 5.0, (66, 40, 23, 17), 1.0),
    3: ((-1.0, -32.0), 0.0, 0.0, (63, 44, 27, 19), 1.02),
    4: ((-12.0, -30.0), -6.0, -5.0, (57, 41, 25, 18), 0.93),
    5: ((-22.0, -26.0), -12.0, -9.0, (52, 33, 19, 16), 0.86),
}


def build_hand(scores: dict[str, int], limb: str,
               rng: np.random.Generator, damage_rng: np.random.Generator) -> LimbModel:
    """The left-hand skeleton with ``scores`` (columns of ``limb``, missing = 0) built in.

    ``rng`` draws the anatomy (sizes, finger spread), ``damage_rng`` the erosion shapes, so the same
    ``rng`` gives the same hand whatever the scores.
    """
    s = lambda name: int(scores.get(f"{limb}_{name}", 0))  # noqa: E731
    size = rng.uniform(0.92, 1.08)
    spread = rng.uniform(0.4, 1.8)
    bones: list[Bone] = []
    joints: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    boxes: dict[str, np.ndarray] = {}
    tissue: list[tuple[np.ndarray, float]] = []
    rays: dict[int, list[LongBone]] = {}
    for digit, (base, mc_angle, abd, lengths, w) in _HAND_DIGITS.items():
        L = [x * size * rng.uniform(0.96, 1.04) for x in lengths]
        w *= size
        a_mc = mc_angle * (0.8 + 0.2 * spread)
        a_f = a_mc + abd * spread
        segs = [
            _Segment("mc", L[0], a_mc, (6.0 * w, 3.8 * w, 6.6 * w), GAP_MCP * size),
            _Segment("pp", L[1], a_f + rng.normal(0, 1.5), (6.4 * w, 4.1 * w, 5.3 * w), GAP_PIP * size),
            _Segment("mp", L[2], a_f + rng.normal(0, 2), (5.2 * w, 3.5 * w, 4.4 * w), GAP_DIP * size),
            _Segment("dp", L[3], a_f + rng.normal(0, 2), (4.5 * w, 2.5 * w, 3.5 * w), 0.0),
        ]
        gaps = [narrowed(GAP_MCP * size, s(f"mcp_J__{digit}")), narrowed(GAP_PIP * size, s(f"pip_J__{digit}")),
                GAP_DIP * size]
        chain, js = _chain(np.array(base) * size, segs, gaps, 0.55, 1.0)
        for b, name in zip(chain, ("mc", "pp", "mp", "dp")):
            b.name = f"{name}{digit}"
        erode_joint(chain[0], chain[1], s(f"mcp_E__{digit}"), damage_rng)
        erode_joint(chain[1], chain[2], s(f"pip_E__{digit}"), damage_rng, size=0.85)
        joints[f"{limb}_mcp_J__{digit}"] = joints[f"{limb}_mcp_E__{digit}"] = js[0]
        joints[f"{limb}_pip_J__{digit}"] = joints[f"{limb}_pip_E__{digit}"] = js[1]
        bones += chain
        rays[digit] = chain
        boxes[f"fin_{digit - 1}"] = _ray_box_points(chain, from_u=0.72)
        width = 2 * 5.3 * w + 9
        tip = chain[-1].head + (4.5 - width / 2) * chain[-1].direction
        tissue.append((np.array([chain[0].at(0.6 * chain[0].length, 0), chain[1].head, tip]), width))

    # thumb: MC1, proximal and distal phalanx
    w = 1.05 * size
    a1 = 34 + 8 * spread + rng.normal(0, 2)
    thumb_segs = [
        _Segment("mc1", 44 * size, a1, (6.4 * w, 4.2 * w, 6.4 * w), GAP_MCP * size),
        _Segment("pp1", 31 * size, a1 - 8 + rng.normal(0, 2), (6.4 * w, 4.3 * w, 5.4 * w), GAP_PIP * size),
        _Segment("dp1", 24 * size, a1 - 14 + rng.normal(0, 2), (5.2 * w, 3.0 * w, 4.0 * w), 0.0),
    ]
    thumb, tj = _chain(np.array([23.0, -24.0]) * size, thumb_segs,
                       [narrowed(GAP_MCP * size, s("mcp_J__1")), GAP_PIP * size], 0.55, 1.0)
    erode_joint(thumb[0], thumb[1], s("mcp_E__1"), damage_rng)
    erode_joint(thumb[1], thumb[2], s("mcp_E__ip"), damage_rng, size=0.85)
    joints[f"{limb}_mcp_J__1"] = joints[f"{limb}_mcp_E__1"] = tj[0]
    joints[f"{limb}_mcp_E__ip"] = tj[1]
    bones += thumb
    boxes["fin_ip"] = _ray_box_points(thumb, from_u=0.5)

    # forearm
    radius = LongBone("radius", np.array([15.0, 140.0]) * size, _unit(-2), 132 * size, 8 * size, 7.0 * size,
                      13.5 * size, 0.0, -1.2 * size, head_tilt=0.28, density=1.05, cortex=1.8 * size)
    ulna = LongBone("ulna", np.array([-19.0, 140.0]) * size, _unit(1.5), 129 * size, 6 * size, 5.2 * size,
                    8.0 * size, 0.0, 2.5 * size, density=1.0, cortex=1.6 * size)
    styloid = Blob("ulnar_styloid", ulna.head + np.array([-5.5, 1.5]) * size, 2.2 * size, 3.6 * size, 0.35)
    # carpus (centre, semi-axes, angle in degrees)
    c = lambda name, x, y, a, b, ang=0.0: Blob(name, np.array([x, y]) * size, a * size, b * size,  # noqa: E731
                                              np.radians(ang) + rng.normal(0, 0.05))
    scaphoid = c("scaphoid", 14.0, -4.0, 6.6, 11.5, 42)
    lunate = c("lunate", 0.0, -1.0, 8.0, 7.0)
    triquetrum = c("triquetrum", -14.0, -6.5, 6.4, 5.8, 25)
    pisiform = c("pisiform", -16.5, -2.5, 4.6, 4.6)
    trapezium = c("trapezium", 22.0, -18.0, 7.2, 6.6, 25)
    trapezoid = c("trapezoid", 10.5, -21.5, 5.8, 5.8)
    capitate = c("capitate", -1.0, -17.5, 7.2, 9.8, 5)
    hamate = c("hamate", -14.0, -17.5, 7.4, 9.0, 15)
    carpals = [scaphoid, lunate, triquetrum, pisiform, trapezium, trapezoid, capitate, hamate]
    g = lambda name: narrowed(GAP_WRIST * size, s(f"wrist_J__{name}"))  # noqa: E731
    centres = {
        "radcar": (_set_bone_gap(scaphoid, radius, g("radcar"), True)
                   + _set_bone_gap(lunate, radius, g("radcar"), True)) / 2,
        "mna": (_set_blob_gap(scaphoid, trapezium, g("mna")) + _set_blob_gap(scaphoid, trapezoid, g("mna"))) / 2,
        "capnlun": (_set_blob_gap(capitate, scaphoid, g("capnlun"))
                    + _set_blob_gap(capitate, lunate, g("capnlun"))) / 2,
        "cmc3": _set_bone_gap(capitate, rays[3][0], g("cmc3"), False),
        "cmc4": _set_bone_gap(hamate, rays[4][0], g("cmc4"), False),
        "cmc5": _set_bone_gap(hamate, rays[5][0], g("cmc5"), False),
    }
    for name, centre in centres.items():
        joints[f"{limb}_wrist_J__{name}"] = (centre, np.array([0.0, -1.0]))
    eroded = {"mc1": thumb[0], "mul": trapezium, "nav": scaphoid, "lunate": lunate, "radius": radius, "ulna": ulna}
    for site in WRIST_EROSION_SITES:
        bone = eroded[site]
        if isinstance(bone, Blob):
            where = bone.centre
        elif site == "mc1":
            where = bone.at(0.12 * bone.length, 0)
        else:
            where = bone.at(bone.length - 5 * size, 0)
        erode_outline(bone, s(f"wrist_E__{site}"), damage_rng, at_head=site != "mc1")
        joints[f"{limb}_wrist_E__{site}"] = (where, np.array([0.0, -1.0]))
    bones = [radius, ulna, styloid, *carpals, *bones]

    wrist_pts = [b.centre + r * np.array([np.cos(t), np.sin(t)]) for b in carpals for r in (b.a, b.b)
                 for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    for bone in (radius, ulna):
        for v in (-1, 1):
            wrist_pts.append(bone.at(bone.length - 22 * size, v * bone.head_hw))
            wrist_pts.append(bone.at(bone.length, v * bone.head_hw))
    for mc in (thumb[0], *(rays[d][0] for d in (2, 3, 4, 5))):
        for v in (-1, 1):
            wrist_pts.append(mc.at(0.14 * mc.length, v * mc.base_hw))
    boxes["wrist"] = np.array(wrist_pts)

    # soft tissue: palm and forearm as polygons, digits as strokes
    mc2, mc5, mc1 = rays[2][0], rays[5][0], thumb[0]
    palm = [mc5.at(0.0, -14 * size), mc5.at(mc5.length, -10 * size), rays[5][1].at(0.3 * rays[5][1].length, 0),
            rays[2][1].at(0.3 * rays[2][1].length, 0), mc2.at(mc2.length, 9 * size),
            mc2.at(0.55 * mc2.length, 11 * size), mc1.at(0.8 * mc1.length, -7 * size),
            mc1.at(0.8 * mc1.length, 10 * size), mc1.at(0.0, 14 * size),
            radius.at(radius.length - 30 * size, radius.head_hw + 6 * size),
            ulna.at(ulna.length - 30 * size, -ulna.head_hw - 7 * size)]
    tissue.insert(0, (np.array(palm), 0.0))
    forearm = [radius.at(radius.length - 30 * size, radius.head_hw + 6 * size), radius.at(0, 16 * size),
               ulna.at(0, -16 * size), ulna.at(ulna.length - 30 * size, -ulna.head_hw - 7 * size)]
    tissue.insert(0, (np.array(forearm), 0.0))
    width = 2 * 5.4 * w + 10
    tissue.append((np.array([mc1.at(0.5 * mc1.length, 0), thumb[1].head,
                             thumb[2].head + (4.5 - width / 2) * thumb[2].direction]), width))
    return LimbModel("hand", bones, joints, boxes, tissue)


def _ray_box_points(chain: list[LongBone], from_u: float) -> np.ndarray:
    """Outline points of a ray from ``from_u`` of its first bone to the tip of its last."""
    first = chain[0]
    pts = [first.at(from_u * first.length, v * first.half_width(from_u * first.length)) for v in (-1, 1)]
    for b in chain:
        for u in ((b.length,) if b is first else (0.0, b.length)):
            for v in (-1, 1):
                pts.append(b.at(u, v * b.half_width(u)))
    pts.append(chain[-1].head + 1.0 * chain[-1].direction)
    return np.array(pts)


# ----------------------------------------------------------------------------------------------
# Foot

_FOOT_TOES = {  # toe: MT base (x, y), MT angle, toe deviation, lengths MT/PP/(MP)/DP, width scale
    1: ((16.0, 0.0), 7.0, -10.0, (62, 30, 24), 1.0),
    2: ((3.5, -4.0), 2.0, 0.0, (74, 25, 10, 9), 1.0),
    3: ((-6.0, -2.0), -4.0, -3.0, (70, 22, 9, 8), 0.95),
    4: ((-14.5, 1.0), -9.0, -5.0, (66, 20, 8, 8), 0.92),
    5: ((-23.0, 5.0), -15.0, -6.0, (62, 18, 7, 7), 0.9),
}


def build_foot(scores: dict[str, int], limb: str,
               rng: np.random.Generator, damage_rng: np.random.Generator) -> LimbModel:
    """The left-foot (dorsoplantar) skeleton with ``scores`` of ``limb`` built in."""
    s = lambda name: int(scores.get(f"{limb}_{name}", 0))  # noqa: E731
    size = rng.uniform(0.92, 1.08)
    spread = rng.uniform(0.5, 1.6)
    bones: list[Bone] = []
    joints: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    boxes: dict[str, np.ndarray] = {}
    tissue: list[tuple[np.ndarray, float]] = []
    mts: dict[int, LongBone] = {}
    for toe, (base, mt_angle, dev, lengths, w) in _FOOT_TOES.items():
        L = [x * size * rng.uniform(0.96, 1.04) for x in lengths]
        w *= size
        a_mt = mt_angle * (0.85 + 0.15 * spread)
        a_t = a_mt + dev * spread
        if toe == 1:
            segs = [
                _Segment("mt1", L[0], a_mt, (10.5 * w, 6.0 * w, 9.2 * w), GAP_MTP * size),
                _Segment("pp1", L[1], a_t, (8.6 * w, 5.4 * w, 7.2 * w), GAP_MTP * size),
                _Segment("dp1", L[2], a_t + rng.normal(0, 2), (7.2 * w, 4.4 * w, 5.6 * w), 0.0),
            ]
            gaps = [narrowed(GAP_MTP * size, s("mtp_J__1")), narrowed(GAP_MTP * size, s("mtp_J__ip"))]
        else:
            segs = [
                _Segment(f"mt{toe}", L[0], a_mt, ((7.5 if toe == 5 else 5.6) * w, 3.3 * w, 5.2 * w), GAP_MTP * size),
                _Segment(f"pp{toe}", L[1], a_t + rng.normal(0, 2), (4.8 * w, 3.0 * w, 3.9 * w), GAP_TOE * size),
                _Segment(f"mp{toe}", L[2], a_t + rng.normal(0, 3), (3.8 * w, 3.1 * w, 3.5 * w), GAP_TOE * size),
                _Segment(f"dp{toe}", L[3], a_t + rng.normal(0, 3), (3.5 * w, 2.6 * w, 3.2 * w), 0.0),
            ]
            gaps = [narrowed(GAP_MTP * size, s(f"mtp_J__{toe}")), GAP_TOE * size, GAP_TOE * size]
        chain, js = _chain(np.array(base) * size, segs, gaps, 0.6, 1.0)
        for b, seg in zip(chain, segs):
            b.name = seg.name
        # foot erosion 0..10 adds both sides of the joint: count = score, sizes as a hand half-score
        e = s(f"mtp_E__{toe}")
        erode_joint(chain[0], chain[1], e / 2, damage_rng, size=1.15, count=e)
        joints[f"{limb}_mtp_J__{toe}"] = joints[f"{limb}_mtp_E__{toe}"] = js[0]
        if toe == 1:
            e = s("mtp_E__ip")
            erode_joint(chain[1], chain[2], e / 2, damage_rng, count=e)
            joints[f"{limb}_mtp_J__ip"] = joints[f"{limb}_mtp_E__ip"] = js[1]
        bones += chain
        mts[toe] = chain[0]
        boxes["fin_ip" if toe == 1 else f"fin_{toe - 1}"] = _ray_box_points(chain, from_u=0.68)
        tip = chain[-1].head + 3 * chain[-1].direction
        width = 2 * (7.6 if toe == 1 else 4.3) * w + 6
        tissue.append((np.array([chain[0].at(0.75 * chain[0].length, 0), chain[1].head, tip]), width))
    mt1 = mts[1]
    sesamoids = [Blob("sesamoid_m", mt1.at(mt1.length - 9 * size, 4.5 * size), 3.6 * size, 4.4 * size, 0.1,
                      density=0.6, power=2.0),
                 Blob("sesamoid_l", mt1.at(mt1.length - 10 * size, -4.0 * size), 3.2 * size, 4.0 * size, -0.1,
                      density=0.6, power=2.0)]
    c = lambda name, x, y, a, b, ang=0.0: Blob(name, np.array([x, y]) * size, a * size, b * size,  # noqa: E731
                                              np.radians(ang) + rng.normal(0, 0.05))
    tarsals = [c("cuneiform_m", 17.0, 12.0, 8.5, 10.0, 8), c("cuneiform_i", 5.0, 9.0, 5.4, 6.5),
               c("cuneiform_l", -5.5, 11.0, 5.6, 7.8, -5), c("cuboid", -19.0, 17.0, 10.0, 11.5, -15),
               c("navicular", 8.0, 28.0, 17.0, 7.5, -8), c("talus", 10.0, 49.0, 15.0, 13.0),
               c("calcaneus", -14.0, 58.0, 14.0, 22.0, -10)]
    bones = [*tarsals, *bones, *sesamoids]
    tissue.insert(0, (np.array([mts[5].at(0, -12 * size), mts[5].at(mts[5].length, -9 * size),
                                mts[2].at(mts[2].length + 12 * size, 0), mt1.at(mt1.length, 13 * size),
                                mt1.at(0, 14 * size), np.array([30.0, 90.0]) * size,
                                np.array([-34.0, 90.0]) * size]), 0.0))
    midfoot = np.array([t.centre + [0.0, t.b] for t in tarsals[:5]])
    return LimbModel("foot", bones, joints, boxes, tissue, midfoot)


def build_limb(limb: str, scores: dict[str, int], rng: np.random.Generator,
               damage_rng: np.random.Generator) -> LimbModel:
    """The skeleton of ``limb`` (LH/RH/LF/RF) in canonical left orientation, with its scores built in."""
    model = (build_hand if limb[1] == "H" else build_foot)(scores, limb, rng, damage_rng)
    missing = {j.column for j in joints_for(limb)} - set(model.joints)
    if missing:  # the catalogue and the anatomy must agree on every joint
        raise AssertionError(f"anatomy lacks joints {sorted(missing)}")
    return model

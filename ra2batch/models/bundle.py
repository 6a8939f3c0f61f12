"""The model bundle: every model of the pipeline, its weights and its manifest, as one directory.

Layout (local path or ``s3://``)::

    bundle.json                       # Manifest: plan, architecture, preprocessing, provenance, hashes
    detector-hand.safetensors         # one safetensors file per model, never pickle
    detector-foot.safetensors
    joint-<group>.safetensors

``model_version`` is the first 16 hex digits of sha256 over bundle.json's canonical JSON (sorted
keys, no whitespace) followed by every weight file's bytes in name order; it is written beside every
score. Loading checks each file against the sha256 recorded in bundle.json and the shapes against
the architecture, and reports any problem as one :class:`BundleError` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from itertools import chain
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ra2batch import catalogue
from ra2batch.models.detectors import DetectorConfig, detector_from_config, is_portrait
from ra2batch.models.crops import JointCrop, joint_crops
from ra2batch.models.joint_model import JointHeadConfig, JointModel
from ra2batch.models.manifest import FORMAT_VERSION, Architecture, Manifest, Provenance
from ra2batch.models.plan import PLAN, ModelPlan
from ra2batch.models.preprocessing import Preprocessing
from ra2batch.models.pretrained import DETECTOR_LAYOUTS, JOINT_LAYOUTS, check_names, load_pretrained
from ra2batch.storage import Location, resolve
from ra2batch.validation import one_line

MANIFEST_NAME = "bundle.json"
#: What a bundle holds; ``load_bundle(..., parts=...)`` builds a subset.
PARTS = ("detectors", "joint_models")


class BundleError(ValueError):
    """A bundle that cannot be trusted or used: missing file, hash or shape mismatch, unknown format."""


@dataclass(frozen=True)
class Detection:
    """The best box of one class in one image: ``box`` (x0, y0, x1, y1) in that image's pixels."""

    box: tuple[float, float, float, float]
    score: float


def detector_file(kind: str) -> str:
    return f"detector-{kind}.safetensors"


def joint_file(group: str) -> str:
    return f"joint-{group}.safetensors"


def _canonical(raw: Mapping[str, Any]) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _content_hash(raw_manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256(_canonical(raw_manifest))
    for name in sorted(files):
        h.update(files[name])
    return h.hexdigest()[:16]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ModelBundle:
    """Detectors (``detectors[kind]``) and joint models (``joint_models[group]``) with their manifest.

    Build an untrained one with :func:`build_bundle`, train its modules in place, then :meth:`save`;
    the scoring job uses :func:`load_bundle`, :meth:`detect` and :meth:`score`.
    """

    def __init__(self, manifest: Manifest, detectors: dict[str, nn.Module], joint_models: dict[str, nn.Module]):
        self._manifest = manifest
        self.detectors = detectors
        self.joint_models = joint_models
        self._model_version: str | None = None  # set by save and load
        self.device = torch.device("cpu")
        self._pretrained: dict[str, list[str]] = {}  # model -> names of the tensors its pretrained file set

    @classmethod
    def from_manifest(cls, manifest: Manifest, pretrained: Mapping[str, str] | None = None, *,
                      parts: Collection[str] = PARTS, storage_options: dict[str, Any] | None = None) -> ModelBundle:
        """Untrained models for ``manifest``; ``pretrained`` maps a kind or group name to the file
        (local or ``s3://``) of its starting weights (:mod:`ra2batch.models.pretrained`), which the
        manifest's ``provenance.pretrained`` then records.

        ``parts`` picks what to build (``"detectors"``, ``"joint_models"``): a scoring actor that
        only detects need not hold the joint models.
        """
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown bundle part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
        arch, prep = manifest.architecture, manifest.preprocessing
        detectors: dict[str, nn.Module] = {
            kind: detector_from_config(cfg, len(catalogue.detector_classes(kind)), preprocessing=prep)
            for kind, cfg in arch.detectors.items() if "detectors" in parts
        }
        joints: dict[str, nn.Module] = {
            g.name: JointModel(g.backbone, g.n_outputs, g.crop_shape, arch.joint_head, preprocessing=prep)
            for g in manifest.plan.groups if "joint_models" in parts
        }
        bundle = cls(manifest, detectors, joints)
        return bundle._start_from(pretrained, storage_options) if pretrained else bundle

    def _start_from(self, files: Mapping[str, str], storage_options: dict[str, Any] | None) -> ModelBundle:
        """Load each model's starting weights from ``files`` ``{model: file}``; recorded in the provenance."""
        check_names(files, [*self.detectors, *self.joint_models])
        records = dict(self._manifest.provenance.pretrained)
        for name, uri in files.items():
            if name in self.detectors:
                what = f"{name} detector ({self._manifest.architecture.detectors[name].backbone})"  # type: ignore[index]
                model, layouts = self.detectors[name], DETECTOR_LAYOUTS
            else:
                what = f"joint model {name} ({self.plan.group(name).backbone})"
                model, layouts = self.joint_models[name], JOINT_LAYOUTS
            records[name], self._pretrained[name] = load_pretrained(model, uri, what=what, layouts=layouts,
                                                                    storage_options=storage_options)
        provenance = self._manifest.provenance.model_copy(update={"pretrained": records})
        self._manifest = self._manifest.model_copy(update={"provenance": provenance})
        return self

    def pretrained_state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of model ``name`` that its pretrained file set, as they are now (CPU copies, for
        safetensors); empty for a model that started from random weights. Training hands them to the
        workers, which build the model afresh."""
        module = self.detectors[name] if name in self.detectors else self.joint_models[name]
        keys = set(self._pretrained.get(name, ()))
        return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items() if k in keys}

    # -- description -------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def plan(self) -> ModelPlan:
        return self._manifest.plan

    @property
    def preprocessing(self) -> Preprocessing:
        return self._manifest.preprocessing

    @property
    def label_medians(self) -> dict[str, float]:
        return dict(self._manifest.label_medians)

    @property
    def model_version(self) -> str:
        """Content hash of the bundle as last saved or loaded; for one never saved, of its current state."""
        return self._model_version or self._serialise()[2]

    # -- persistence ---------------------------------------------------------------------------------

    def _serialise(self) -> tuple[dict[str, Any], dict[str, bytes], str]:
        files = {detector_file(k): _to_bytes(m) for k, m in self.detectors.items()}
        files.update({joint_file(g): _to_bytes(m) for g, m in self.joint_models.items()})
        weights = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()}
        manifest = Manifest.model_validate({**self._manifest.model_dump(), "weights": weights})
        raw = manifest.model_dump(mode="json")
        return raw, files, _content_hash(raw, files)

    def save(self, uri: str, *, provenance: Provenance | Mapping[str, Any] | None = None,
             metrics: Mapping[str, Any] | None = None, label_medians: Mapping[str, float] | None = None,
             storage_options: dict[str, Any] | None = None) -> str:
        """Write the bundle to ``uri`` (directory or ``s3://`` prefix) and return its model_version.

        ``provenance``, ``metrics`` and ``label_medians`` replace the manifest's when given. Weight
        files are written first and bundle.json last, so an interrupted save never loads: either
        bundle.json is absent or its hashes do not match the files.
        """
        update: dict[str, Any] = {}
        if provenance is not None:
            update["provenance"] = Provenance.model_validate(
                provenance.model_dump() if isinstance(provenance, Provenance) else dict(provenance))
        if metrics is not None:
            update["metrics"] = dict(metrics)
        if label_medians is not None:
            update["label_medians"] = {k: float(v) for k, v in label_medians.items()}
        if update:
            self._manifest = Manifest.model_validate({**self._manifest.model_dump(), **update})
        raw, files, version = self._serialise()
        loc = resolve(uri, storage_options)
        for name, data in files.items():
            loc.write_bytes(data, name)
        loc.write_bytes(json.dumps(raw, indent=2, sort_keys=True).encode() + b"\n", MANIFEST_NAME)
        self._manifest = Manifest.model_validate(raw)
        self._model_version = version
        return version

    # -- placement -----------------------------------------------------------------------------------

    def to(self, device: str | torch.device) -> ModelBundle:
        """Move every model; on CUDA they also switch to channels_last (inference uses bf16 autocast)."""
        self.device = torch.device(device)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        for m in [*self.detectors.values(), *self.joint_models.values()]:
            m.to(self.device, memory_format=fmt)
        return self

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- inference -----------------------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray], kind: str, *, batch_size: int = 4) -> list[dict[str, Detection]]:
        """Best box per class per image: ``images`` are float32 ``H x W`` in [0, 1].

        Returns one ``{class: Detection}`` per image, boxes in that image's pixels; classes with no box
        scoring at least the detector's ``min_score`` are absent. Any ``batch_size`` gives the same
        boxes (up to float rounding).
        """
        if kind not in self.detectors:
            raise ValueError(f"no {kind!r} detector in this bundle; it has {', '.join(self.detectors)}")
        model = self.detectors[kind]
        classes = catalogue.detector_classes(kind)
        min_score = self._manifest.architecture.detectors[kind].min_score  # type: ignore[index]
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        # Portrait and landscape images go in separate batches, each padded to its fixed canvas
        # (detectors.CanvasTransform): an image's boxes never depend on the other images.
        by_orientation: dict[bool, list[int]] = {}
        for i, t in enumerate(tensors):
            by_orientation.setdefault(is_portrait(t), []).append(i)
        found: dict[int, dict[str, Detection]] = {}
        with _evaluating(model), torch.inference_mode(), self._autocast(), _fp32_head_outputs(model.head):
            for idx in by_orientation.values():
                for sl in _batches(len(idx), batch_size):
                    outputs = model([tensors[i].to(self.device, non_blocking=True) for i in idx[sl]])
                    found.update((i, _best_per_class(o, classes, min_score)) for i, o in zip(idx[sl], outputs))
        return [found[i] for i in range(len(tensors))]

    def limb_found(self, detections: Mapping[str, Detection], kind: str) -> tuple[bool, float]:
        """Whether one radiograph's ``detections`` (:meth:`detect`) show a hand (foot), and their
        :func:`limb_confidence`, against the detector's ``limb_min_confidence``."""
        confidence = limb_confidence(detections, kind)
        return confidence >= self._manifest.architecture.detectors[kind].limb_min_confidence, confidence  # type: ignore[index]

    def with_limb_min_confidence(self, thresholds: Mapping[str, float]) -> ModelBundle:
        """This bundle with each detector's ``limb_min_confidence`` set (``{kind: value}``); the same modules."""
        arch = self._manifest.architecture
        detectors = {k: c.model_copy(update={"limb_min_confidence": float(thresholds[k])}) if k in thresholds else c
                     for k, c in arch.detectors.items()}
        manifest = self._manifest.model_copy(update={"architecture": arch.model_copy(update={"detectors": detectors})})
        return ModelBundle(manifest, self.detectors, self.joint_models)

    def score(self, group_name: str, crops: np.ndarray, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Scores of one joint group for float32 crops ``[N, H, W]`` (the group's ``crop_shape``, from ``crops.cut``).

        Returns ``(scores [N, n_outputs] >= 0, attention [N, h, w] in [0, 1])`` as float32 arrays;
        output ``k`` of a crop is the column ``group.columns(limb, crop_class)[k]``.
        """
        if group_name not in self.joint_models:
            raise ValueError(f"no joint group {group_name!r} in this bundle; it has {', '.join(self.joint_models)}")
        model = self.joint_models[group_name]
        group = self.plan.group(group_name)
        x = np.asarray(crops, dtype=np.float32)
        h, w = group.crop_shape
        if x.ndim != 3 or x.shape[1:] != (h, w):
            raise ValueError(f"group {group_name} takes crops [N, {h}, {w}], got shape {x.shape}")
        h, w = model.feature_size
        scores, attention = [np.zeros((0, group.n_outputs), np.float32)], [np.zeros((0, h, w), np.float32)]
        with _evaluating(model), torch.inference_mode(), self._autocast():
            for sl in _batches(len(x), batch_size):
                s, a = model(torch.from_numpy(x[sl]).to(self.device))
                scores.append(s.float().cpu().numpy())
                attention.append(a.float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(attention)

    def score_tta(self, group_name: str, crops: np.ndarray, *, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores averaged over the crop and its horizontal flip (test-time augmentation).

        Returns ``(scores [N, n_outputs], attention [N, h, w], uncertainty [N, n_outputs])``: the
        attention map is the unflipped crop's (it explains the pixels as shown), and ``uncertainty``
        is ``|score(crop) - score(flipped crop)|``, in score points, a disagreement measure that
        flags joints for human review.
        """
        x = np.asarray(crops, dtype=np.float32)
        plain, attention = self.score(group_name, x, batch_size=batch_size)
        flipped, _ = self.score(group_name, np.ascontiguousarray(x[:, :, ::-1]), batch_size=batch_size)
        return (plain + flipped) / 2, attention, np.abs(plain - flipped)

    def joint_crops(self, image: np.ndarray, detections: Mapping[str, Any], limb: str) -> Iterator[JointCrop]:
        """:func:`ra2batch.models.crops.joint_crops` with this bundle's plan and crop margin."""
        return joint_crops(image, detections, limb, self.plan, margin=self.preprocessing.crop_margin)


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the caller's mode again (a trainer may validate mid-training)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _fp32_head_outputs(head: nn.Module) -> Iterator[None]:
    """Hand the detector's box decoding fp32 logits and offsets: in bf16 a box at x ~ 1000 px would be
    rounded to 4-8 px."""
    handle = head.register_forward_hook(lambda _m, _i, out: {k: v.float() for k, v in out.items()})
    try:
        yield
    finally:
        handle.remove()


def _to_bytes(module: nn.Module) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()})


def _image_tensor(image: np.ndarray, index: int) -> torch.Tensor:
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"image {index}: expected a grey H x W array, got shape {a.shape}")
    if a.size and not (a.min() >= 0.0 and a.max() <= 1.0):
        raise ValueError(f"image {index}: values must lie in [0, 1], got {a.min():g}..{a.max():g}")
    return torch.from_numpy(a)[None]


def limb_confidence(detections: Mapping[str, Detection], kind: str) -> float:
    """How sure the detector is that a radiograph shows a hand (foot): the mean, over the detector's
    classes, of the best box's score (0 for a class it did not find). A phantom hand or foot scores
    0.8-1.0 with the demo bundle, noise, gradients and blank-ish images 0.1-0.55."""
    classes = catalogue.detector_classes(kind)
    return float(sum(detections[c].score if c in detections else 0.0 for c in classes) / len(classes))


def _best_per_class(output: Mapping[str, torch.Tensor], classes: Sequence[str],
                    min_score: float) -> dict[str, Detection]:
    boxes = output["boxes"].float().cpu().numpy()
    scores = output["scores"].float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    best: dict[str, Detection] = {}
    for label, name in enumerate(classes, start=1):
        idx = np.flatnonzero((labels == label) & (scores >= min_score))
        if idx.size:
            i = idx[np.argmax(scores[idx])]
            best[name] = Detection(tuple(float(v) for v in boxes[i]), float(scores[i]))  # type: ignore[arg-type]
    return best


def build_bundle(
    plan: ModelPlan = PLAN,
    detectors: DetectorConfig | Mapping[str, DetectorConfig] = DetectorConfig(),
    *,
    joint_head: JointHeadConfig = JointHeadConfig(),
    preprocessing: Preprocessing = Preprocessing(),
    pretrained: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ModelBundle:
    """An untrained bundle in memory: a hand and a foot detector and one joint model per plan group.

    ``detectors`` is one config for both kinds or ``{"hand": ..., "foot": ...}``; ``pretrained`` maps
    ``"hand"``/``"foot"``/a group name to the file (local or ``s3://``) of its starting weights: the
    whole model's or its backbone's (timm's, torchvision's ImageNet weights), safetensors or a
    PyTorch state dict (:mod:`ra2batch.models.pretrained`).
    """
    per_kind = dict(detectors) if isinstance(detectors, Mapping) else {"hand": detectors, "foot": detectors}
    manifest = Manifest(plan=plan, architecture=Architecture(detectors=per_kind, joint_head=joint_head),
                        preprocessing=preprocessing)
    return ModelBundle.from_manifest(manifest, pretrained, storage_options=storage_options)


def _read_manifest(loc: Location, uri: str) -> tuple[dict[str, Any], Manifest]:
    if not loc.exists(MANIFEST_NAME):
        raise BundleError(f"{uri}: no {MANIFEST_NAME}; not a model bundle (or its save did not finish)")
    try:
        raw = json.loads(loc.read_bytes(MANIFEST_NAME))
    except ValueError as e:
        raise BundleError(f"{uri}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(f"{uri}: bundle format version {version!r} is not supported (this ra2batch reads "
                          f"version {FORMAT_VERSION})")
    try:
        return raw, Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{uri}: invalid {MANIFEST_NAME}: {one_line(e)}") from None


def _read_weights(loc: Location, uri: str, manifest: Manifest, expected: Sequence[str]) -> dict[str, bytes]:
    missing_entries = [n for n in expected if n not in manifest.weights]
    if missing_entries:
        raise BundleError(f"{uri}: {MANIFEST_NAME} records no hash for {', '.join(missing_entries)}")
    unused = sorted(set(manifest.weights) - set(expected))
    if unused:
        raise BundleError(f"{uri}: {MANIFEST_NAME} lists weight files no model uses: {', '.join(unused)}")
    files: dict[str, bytes] = {}
    for name, rec in manifest.weights.items():
        if not loc.exists(name):
            raise BundleError(f"{uri}: missing weight file {name}")
        data = loc.read_bytes(name)
        if len(data) != rec.size:
            raise BundleError(f"{uri}: {name} has {len(data)} bytes but {MANIFEST_NAME} records {rec.size} "
                              "(truncated or replaced)")
        digest = hashlib.sha256(data).hexdigest()
        if digest != rec.sha256:
            raise BundleError(f"{uri}: {name} sha256 {digest[:12]}... does not match {MANIFEST_NAME} "
                              f"({rec.sha256[:12]}...): the file was changed or corrupted")
        files[name] = data
    return files


def _load_into(module: nn.Module, data: bytes, name: str, uri: str) -> None:
    """Give ``module`` (built on the meta device: shapes only) the weights in ``data``, upcast to the
    architecture's dtypes (a float16 bundle runs in float32)."""
    try:
        state = load_safetensors(data)
    except SafetensorError as e:
        raise BundleError(f"{uri}: {name} is not a readable safetensors file ({e})") from None
    want = module.state_dict()
    for key, t in want.items():
        if key not in state:
            raise BundleError(f"{uri}: {name} lacks weight {key} that the architecture needs")
        if tuple(state[key].shape) != tuple(t.shape):
            raise BundleError(f"{uri}: {name}: {key} has shape {tuple(state[key].shape)} but the architecture "
                              f"in {MANIFEST_NAME} needs {tuple(t.shape)}")
    extra = sorted(set(state) - set(want))
    if extra:
        raise BundleError(f"{uri}: {name} has {len(extra)} weights the architecture does not use (first: {extra[0]})")
    module.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()}, assign=True)
    unset = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if unset:  # a tensor outside the state dict: the architecture, not the file, is at fault
        raise BundleError(f"{uri}: {name}: the architecture has {len(unset)} tensor(s) no weight file sets "
                          f"(first: {unset[0]})")


def recalibrate(uri: str, thresholds: Mapping[str, float], held_out: Mapping[str, Any] | None = None,
                storage_options: dict[str, Any] | None = None, quality: Mapping[str, Any] | None = None) -> str:
    """Set the ``limb_min_confidence`` of the detectors of the saved bundle at ``uri`` (``{kind: value}``)
    and, when given, its held-out figures (``metrics.held_out``) and their quality check
    (``metrics.quality``), in its bundle.json alone, leaving the weight files as they are (a float16
    bundle stays float16); returns the bundle's new ``model_version``."""
    loc = resolve(uri, storage_options)
    raw, _ = _read_manifest(loc, uri)
    for kind, value in thresholds.items():
        raw["architecture"]["detectors"][kind]["limb_min_confidence"] = float(value)
    for key, value in (("held_out", held_out), ("quality", quality)):
        if value is not None:
            raw.setdefault("metrics", {})[key] = dict(value)
    Manifest.model_validate(raw)
    loc.write_bytes(json.dumps(raw, indent=2, sort_keys=True).encode() + b"\n", MANIFEST_NAME)
    return load_bundle(uri, storage_options, parts=()).model_version


def load_bundle(uri: str, storage_options: dict[str, Any] | None = None, *,
                parts: Collection[str] = PARTS) -> ModelBundle:
    """Load and verify a bundle from a directory or ``s3://`` prefix (weights on the CPU).

    Every file is checked against bundle.json and hashed into ``model_version``, but only the
    models in ``parts`` are built (``parts=()`` reads the manifest and version alone). Models are
    built on the meta device and take their weights by assignment, so no time goes on a random
    initialisation that the weights would overwrite.
    """
    loc = resolve(uri, storage_options)
    raw, manifest = _read_manifest(loc, uri)
    with torch.device("meta"):
        bundle = ModelBundle.from_manifest(manifest, parts=parts)
    expected = ([detector_file(k) for k in manifest.architecture.detectors]
                + [joint_file(g.name) for g in manifest.plan.groups])
    files = _read_weights(loc, uri, manifest, expected)
    for kind, module in bundle.detectors.items():
        _load_into(module, files[detector_file(kind)], detector_file(kind), uri)
    for group, module in bundle.joint_models.items():
        _load_into(module, files[joint_file(group)], joint_file(group), uri)
    bundle._model_version = _content_hash(raw, files)
    return bundle

"""Starting weights for a bundle's models (``ra2batch train --pretrained NAME=FILE``).

A file, local or ``s3://``, is a safetensors file or a PyTorch state dict (``.pth``/``.bin``, read
with ``torch.load(weights_only=True)``: tensors only, never arbitrary objects). It holds either the
whole model (e.g. a model of an earlier bundle) or its backbone alone in timm's or torchvision's key
layout (their published ImageNet weights). Classifier and head tensors that do not fit the model
(ImageNet's 1000 classes, another group's outputs) are dropped; any other tensor that does not fit,
and a backbone tensor the file lacks, is an error.
"""

from __future__ import annotations

import hashlib
import io
from typing import Iterable, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from ra2batch.models.manifest import PretrainedWeights
from ra2batch.storage import resolve

#: Key prefixes of classifiers and heads, in the file's names and the model's.
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")
#: ``(file prefix, model prefix)`` of a backbone-only file: timm's models under ``backbone.``.
JOINT_LAYOUTS = (("", "backbone."),)
#: torchvision's ResNets (``conv1.``, ``layer1.``...) and MobileNetV3 (``features.N.``) under the FPN.
DETECTOR_LAYOUTS = (("", "backbone.body."), ("features.", "backbone.body."))
#: How many tensor names an error message shows.
SHOWN = 3


class PretrainedError(ValueError):
    """Weights that cannot start a model: an unknown model, a missing or unreadable file, tensors that do not fit."""


def parse_pretrained(values: Iterable[str], models: Sequence[str]) -> dict[str, str]:
    """``NAME=FILE`` flag values as ``{name: file}``; every name must be one of ``models``."""
    files: dict[str, str] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise PretrainedError(f"--pretrained takes NAME=FILE, got {value!r}")
        if name in files:
            raise PretrainedError(f"--pretrained {name} is given twice")
        files[name] = file
    check_names(files, models)
    return files


def check_names(names: Iterable[str], models: Sequence[str]) -> None:
    """Refuse pretrained weights for a model that is not among ``models`` (``hand``, ``foot``, group names)."""
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise PretrainedError(f"no model named {', '.join(unknown)} to start from pretrained weights; "
                              f"the models are {', '.join(models)}")


def check_exists(uri: str, storage_options: dict | None = None) -> None:
    """Refuse a file that is not there (cheap: the command checks before Ray starts)."""
    try:
        found = resolve(uri, storage_options).exists()
    except OSError as e:  # e.g. S3 unreachable or access denied
        raise PretrainedError(f"{uri}: cannot read the pretrained weights ({e})") from None
    if not found:
        raise PretrainedError(f"{uri}: no such pretrained weights file")


def read_weights(uri: str, storage_options: dict | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of the file at ``uri`` by name, and the file's sha256 (hex)."""
    check_exists(uri, storage_options)
    try:
        data = resolve(uri, storage_options).read_bytes()
    except OSError as e:
        raise PretrainedError(f"{uri}: cannot read the pretrained weights ({e})") from None
    return _tensors(data, uri), hashlib.sha256(data).hexdigest()


def _tensors(data: bytes, uri: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except SafetensorError:
        pass
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # torch raises UnpicklingError, KeyError, EOFError, RuntimeError... for other files
        obj = None
    for key in ("state_dict", "model"):  # training checkpoints (timm's, torchvision's) wrap the state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedError(f"{uri}: not a safetensors file or a PyTorch state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}  # DDP's prefix


def _rename(key: str, source: str, target: str) -> str | None:
    return target + key[len(source):] if key.startswith(source) else None


def _is_head(key: str | None) -> bool:
    return key is not None and key.startswith(HEAD_PREFIXES)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def fit(model: nn.Module, state: Mapping[str, torch.Tensor], layouts: Sequence[tuple[str, str]],
        what: str, uri: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``state`` that go into ``model``, by the model's names, and the file's names of the
    classifier/head tensors dropped. The layout (whole model or one of ``layouts``) is the one that
    places most tensors; a misfit raises one :class:`PretrainedError` line naming ``what`` and the tensors."""
    own = model.state_dict()
    source, target = max([("", ""), *layouts], key=lambda lay: sum(_rename(k, *lay) in own for k in state))
    loaded, dropped, wrong, unknown, misfit = {}, [], [], [], set()
    for key, t in sorted(state.items()):  # safetensors keeps no order: name order, for stable messages
        name = _rename(key, source, target)
        if name in own and own[name].shape == t.shape:
            loaded[name] = t
        elif _is_head(key) or _is_head(name):
            dropped.append(key)
        elif name in own:
            wrong.append(f"{key} {_shape(t)} (model {_shape(own[name])})")
            misfit.add(name)
        else:
            unknown.append(f"{key} {_shape(t)}")
    lacking = [f"{k} {_shape(t)}" for k, t in own.items() if k.startswith(target) and k not in loaded
               and k not in misfit and not _is_head(k) and not k.endswith("num_batches_tracked")]
    problems = [f"{len(items)} tensor(s) {label}: {', '.join(items[:SHOWN])}{', ...' if len(items) > SHOWN else ''}"
                for label, items in (("of another shape", wrong), ("unknown to it", unknown),
                                     ("missing", lacking)) if items]
    if problems:
        raise PretrainedError(f"{uri}: the weights do not fit the {what}: {'; '.join(problems)}")
    return loaded, sorted(dropped)


def load_pretrained(model: nn.Module, uri: str, *, what: str, layouts: Sequence[tuple[str, str]],
                    storage_options: dict | None = None) -> tuple[PretrainedWeights, list[str]]:
    """Load the file at ``uri`` into ``model`` (in place; tensors it does not set keep their random
    start); returns the record for the bundle's provenance and the model's names of the tensors set."""
    state, digest = read_weights(uri, storage_options)
    loaded, dropped = fit(model, state, layouts, what, uri)
    model.load_state_dict(loaded, strict=False)
    return PretrainedWeights(file=uri, sha256=digest, loaded=len(loaded), dropped=dropped), sorted(loaded)


def describe(name: str, record: PretrainedWeights) -> str:
    """One log line: which weights model ``name`` starts from."""
    dropped = f", {len(record.dropped)} dropped ({', '.join(record.dropped)})" if record.dropped else ""
    return f"{name} starts from {record.file} (sha256 {record.sha256[:12]}): {record.loaded} tensors{dropped}"

"""Models: the plan (which joint model scores which crop), detectors, joint models, crops, bundles.

Typical use::

    from ra2batch.models import PLAN, DetectorConfig, build_bundle, load_bundle
    bundle = build_bundle(PLAN, DetectorConfig())      # untrained; train bundle.detectors / joint_models
    bundle.save("s3://bucket/bundles/v1", provenance={...}, metrics={...}, label_medians={...})
    bundle = load_bundle("s3://bucket/bundles/v1")    # verified against bundle.json's hashes
    found = bundle.detect(images, "hand")             # [{class: Detection(box, score)}, ...]
    for c in bundle.joint_crops(images[0], found[0], "RH"):   # mirrored to the left side
        scores, attention = bundle.score(c.group, c.crop[None])
"""

from ra2batch.models import crops
from ra2batch.models.bundle import BundleError, Detection, ModelBundle, build_bundle, load_bundle
from ra2batch.models.detectors import DetectorConfig, create_detector, list_detectors, register
from ra2batch.models.joint_model import JointHeadConfig, JointModel, LocallyConnected1x1
from ra2batch.models.manifest import FORMAT_VERSION, Manifest, Provenance
from ra2batch.models.plan import PLAN, JointGroup, ModelPlan
from ra2batch.models.preprocessing import Preprocessing

__all__ = [
    "PLAN", "FORMAT_VERSION", "BundleError", "Detection", "DetectorConfig", "JointGroup", "JointHeadConfig",
    "JointModel", "LocallyConnected1x1", "Manifest", "ModelBundle", "ModelPlan", "Preprocessing", "Provenance",
    "build_bundle", "create_detector", "crops", "list_detectors", "load_bundle", "register",
]

"""The cluster configurations in cluster/, the Dockerfile and the cluster guide agree with the code.

Nothing here can build the image or reach a cluster, so these tests check what would otherwise
only fail on a cluster: every file parses, every entry point exists and accepts the flags it is
given, token authentication stays on everywhere, all configs run the same image, and the image's
pins are pyproject.toml's.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
AWS = ROOT / "cluster" / "aws" / "cluster.yaml"
#: Where commands are written out for people; the cluster guide may since have moved into README.md.
GUIDES = [p for p in (ROOT / "docs" / "running-on-a-cluster.md", ROOT / "cluster" / "README.md", ROOT / "README.md")
          if p.exists()]
TOKEN_SECRET = "ra2batch-ray-token"


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    return next(r for r in map(Requirement, pyproject()["project"]["dependencies"]) if r.name == name)


@functools.cache
def dockerfile() -> dict:
    """FROM image, WORKDIR, COPY sources and ``name==version`` pins of the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines
             if ln.strip() and not ln.lstrip().startswith("#")]
    pins = dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", " ".join(a for k, a in instr if k == "RUN")))
    copies = [a.split() for k, a in instr if k == "COPY"]
    return {
        "from": next(a for k, a in instr if k == "FROM").split()[0],
        "workdir": [a for k, a in instr if k == "WORKDIR"][-1],
        "copied": {src for c in copies for src in c[:-1] if not src.startswith("--")},
        "pins": pins,
    }


def app_dir() -> str:
    return dockerfile()["workdir"].rstrip("/")


@functools.cache
def kuberay_docs() -> tuple[tuple[str, dict], ...]:
    """Every Kubernetes object in cluster/kuberay, with the RayJob templated inside a ConfigMap."""
    out = []
    for f in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out.append((f.name, doc))
            if doc["kind"] == "ConfigMap":
                out += [(f"{f.name}:{k}", yaml.safe_load(v)) for k, v in doc["data"].items() if k.endswith(".yaml")]
    return tuple(out)


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(f, d) for f, d in kuberay_docs() if d["kind"] == kind]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """The RayCluster spec of the long-lived cluster and of every job's own cluster."""
    specs = [(f, d["spec"]) for f, d in of_kind("RayCluster")]
    specs += [(f, d["spec"]["rayClusterSpec"]) for f, d in of_kind("RayJob")]
    specs += [(f, d["spec"]["jobTemplate"]["rayClusterSpec"]) for f, d in of_kind("RayCronJob")]
    return specs


def ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def pod_images() -> list[tuple[str, str]]:
    """``(file, image)`` of every container anywhere in cluster/kuberay."""
    found = []

    def walk(f: str, node) -> None:
        if isinstance(node, dict):
            if "containers" in node:
                found.extend((f, c["image"]) for c in node["containers"])
            for v in node.values():
                walk(f, v)
        elif isinstance(node, list):
            for v in node:
                walk(f, v)

    for f, d in kuberay_docs():
        walk(f, d)
    return found


def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def entry_points() -> list[tuple[str, str]]:
    """``(where, command)`` of every ``python .../jobs/X.py ...`` in the configs and the guides."""
    commands = [(f, d["spec"]["entrypoint"]) for f, d in of_kind("RayJob")]
    commands += [(f, d["spec"]["jobTemplate"]["entrypoint"]) for f, d in of_kind("RayCronJob")]
    for path in [*GUIDES, AWS]:
        text = re.sub(r"\\\n\s*#?", " ", path.read_text())  # shell continuations, also in YAML comments
        for m in re.finditer(r"python3? (\S*jobs/\w+\.py)([^\n`;&|]*)", text):
            commands.append((str(path.relative_to(ROOT)), f"python {m.group(1)}{m.group(2)}"))
    return commands


@functools.cache
def script_help(script: Path) -> str:
    run = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{script.relative_to(ROOT)} --help failed: {run.stderr.strip()[-500:]}"
    return run.stdout


def required_flags(help_text: str) -> set[str]:
    """Options the usage line shows outside brackets (argparse's required options)."""
    usage = help_text.split("\n\n", 1)[0]
    depth, outside = 0, []
    for ch in usage:
        depth += ch == "["
        outside.append(ch if depth == 0 else " ")
        depth -= ch == "]"
    return set(re.findall(r"(?<![\w-])--[\w-]+", "".join(outside)))


def test_every_file_parses_into_the_expected_objects():
    kinds = {f: [d["kind"] for d in yaml.safe_load_all((KUBERAY / f).read_text())]
             for f in ("raycluster.yaml", "rayjob-score.yaml", "rayjob-train.yaml", "raycronjob-nightly.yaml",
                       "cronjob-nightly.yaml")}
    assert kinds == {
        "raycluster.yaml": ["RayCluster"],
        "rayjob-score.yaml": ["RayJob"],
        "rayjob-train.yaml": ["RayJob"],
        "raycronjob-nightly.yaml": ["RayCronJob"],
        "cronjob-nightly.yaml": ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"],
    }
    assert sorted(p.name for p in KUBERAY.glob("*.yaml")) == sorted(kinds)
    assert all(d["apiVersion"] == "ray.io/v1" for _, d in kuberay_docs() if d["kind"].startswith("Ray"))
    assert aws()["provider"]["type"] == "aws"


def test_cluster_has_a_cpu_head_and_an_autoscaling_gpu_worker_group():
    (_, spec), = [(f, d["spec"]) for f, d in of_kind("RayCluster")]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]
    assert gpu_groups, "no worker group asks for GPUs"
    for g in gpu_groups:
        assert g["minReplicas"] == 0 < g["maxReplicas"], "the GPU group should scale between 0 and its maximum"


def test_every_job_cluster_is_the_raycluster_spec():
    (_, base), *others = ray_cluster_specs()
    assert len(others) == 4  # rayjob-score, rayjob-train, raycronjob-nightly, the CronJob's RayJob template
    for where, spec in others:
        assert spec == base, f"{where}: the job's cluster differs from raycluster.yaml"


def test_ray_token_authentication_stays_on_everywhere():
    for where, spec in ray_cluster_specs():
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, where
        for c in ray_containers(spec):
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", (where, c["name"])
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": TOKEN_SECRET, "key": "auth_token"}, (where, c["name"])
    for path in [*KUBERAY.glob("*.yaml"), AWS]:
        assert not re.search(r"RAY_AUTH_MODE\W+disabled|mode:\s*disabled", path.read_text()), path.name
    docker = aws()["docker"]
    options = " ".join(docker["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    token_path = re.search(r"--env RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert token_path in aws()["file_mounts"], "the token file the containers read is not mounted"


def test_all_configs_run_the_one_image_of_this_version():
    images = {image for _, image in pod_images()} | {aws()["docker"]["image"]}
    assert len(images) == 1, f"configs use different images: {sorted(images)}"
    image = images.pop()
    assert image.rsplit(":", 1)[1] == pyproject()["project"]["version"]
    assert {f.split(":")[0] for f, _ in pod_images()} == {p.name for p in KUBERAY.glob("*.yaml")}


def test_dockerfile_pins_are_the_pyproject_pins():
    image = dockerfile()["from"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", image)
    assert m, f"FROM {image}: expected Ray's official GPU image rayproject/ray:X.Y.Z-py3NN-gpu"
    ray_version, python_minor = m.groups()
    assert requirement("ray").specifier.contains(ray_version), f"Ray {ray_version} is not {requirement('ray')}"
    assert f"3.{python_minor}" in pyproject()["project"]["requires-python"].replace(">=", "")
    pins = dockerfile()["pins"]
    for name in ("torch", "torchvision"):
        assert name in pins, f"the Dockerfile does not pin {name}"
    for name, version in pins.items():
        assert str(requirement(name).specifier) == f"=={version}", f"{name}=={version} is not pyproject's pin"
    for where, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray_version, where
    assert {"ra2batch", "jobs", "pyproject.toml"} <= {s.rstrip("/") for s in dockerfile()["copied"]}


@pytest.mark.parametrize("where, command", entry_points(),
                         ids=[f"{w}:{Path(shlex.split(c)[1]).stem}" for w, c in entry_points()])
def test_entry_points_exist_and_accept_their_flags(where, command):
    words = shlex.split(command)
    script = words[1]
    if script.startswith(app_dir() + "/"):  # where the Dockerfile puts the repository
        script = script[len(app_dir()) + 1:]
    path = ROOT / script
    assert path.is_file(), f"{where}: {words[1]} is not in the repository"
    help_text = script_help(path)
    given = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    known = set(re.findall(r"(?<![\w-])--[\w-]+", help_text))
    assert given <= known, f"{where}: {script} has no {sorted(given - known)}"
    assert required_flags(help_text) <= given, f"{where}: {script} needs {sorted(required_flags(help_text) - given)}"


def test_there_are_entry_points_for_scoring_and_the_nightly_run():
    scripts = {Path(shlex.split(c)[1]).name for _, c in entry_points()}
    assert {"score_archive.py", "nightly_rescore.py"} <= scripts
    assert all(shlex.split(c)[1].startswith(app_dir() + "/") for f, c in entry_points() if f.endswith(".yaml")
               or ":" in f), "in-cluster entry points must use the image's path"


def test_nightly_cronjob_creates_the_rayjob_from_its_configmap():
    (_, cron), = of_kind("CronJob")
    (_, cm), = of_kind("ConfigMap")
    (_, rcj), = of_kind("RayCronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["kubectl", "create", "-f"]
    target = Path(container["command"][3])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == target.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"] and target.name in cm["data"]
    template = yaml.safe_load(cm["data"][target.name])
    assert template["kind"] == "RayJob" and "generateName" in template["metadata"]  # a new name each night
    assert template["spec"] == rcj["spec"]["jobTemplate"] | {"ttlSecondsAfterFinished":
                                                             template["spec"]["ttlSecondsAfterFinished"]}
    assert cron["spec"]["schedule"] == rcj["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"

    (_, role), = of_kind("Role")
    (_, binding), = of_kind("RoleBinding")
    (_, account), = of_kind("ServiceAccount")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_aws_launcher_config_is_valid_for_this_ray():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = aws()
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert re.match(r"(m|c|r)\d", head["node_config"]["InstanceType"]), "the head should be a CPU instance"
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]
           and re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu)
    assert "--gpus all" in cfg["docker"]["worker_run_options"]

"""The cluster configs in cluster/ (KubeRay manifests, AWS launcher config, Dockerfile) are valid and consistent.

Offline checks only: YAML shape, the fields KubeRay and Ray need, secrets referenced and never inlined, the RayJob's
`orch submit` command accepted by orch's own parser, and Ray's own cluster-launcher validation for the AWS config.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from orchestrator.control.autoscaling import grow, read_node_types
from orchestrator.control.cli.main import build_parser
from orchestrator.core.spec import load_spec_file
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
CLUSTER = REPO / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
AWS_CONFIG = CLUSTER / "aws" / "gpu-cluster.yaml"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
GPU_EXAMPLE = REPO / "jobs" / "examples" / "gpt-gpu.yaml"
# Where the Dockerfile puts the source tree in the image.
IMAGE_SOURCE = Path("/opt/orch")

# Secret-looking values: AWS key ids, `secret: <literal>` assignments, long opaque tokens.
SECRET_VALUE_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)(secret_access_key|auth_token|password|session_token)\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{16,}"),
    re.compile(r"\b[A-Za-z0-9/+=]{40}\b"),
)
SECRET_ENV_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY)", re.I)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(kind: str) -> dict[str, Any]:
    found = [d for path in KUBERAY for d in _docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in cluster/kuberay, found {len(found)}"
    return found[0]


def _pod_templates() -> dict[str, dict[str, Any]]:
    cluster, job = _by_kind("RayCluster"), _by_kind("RayJob")
    templates = {"head": cluster["spec"]["headGroupSpec"]["template"]}
    for group in cluster["spec"]["workerGroupSpecs"]:
        templates[f"worker group {group['groupName']}"] = group["template"]
    templates["RayJob submitter"] = job["spec"]["submitterPodTemplate"]
    return templates


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [(where, c) for where, t in _pod_templates().items() for c in t["spec"]["containers"]]


def _ray_version_of(image: str) -> str:
    match = re.search(r"rayproject/ray:(\d+\.\d+\.\d+)", image)
    assert match, image
    return match.group(1)


# ---- KubeRay -----------------------------------------------------------------------------------------------------
def test_manifests_parse_with_kubernetes_object_fields():
    assert {p.name for p in KUBERAY} >= {"raycluster.yaml", "rayjob.yaml", "storage-config.yaml"}
    for path in KUBERAY:
        for doc in _docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path


def test_raycluster_has_head_and_gpu_worker_group():
    cluster = _by_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # NCCL needs more shared memory than a container's default 64 MiB.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def _ceiling(path: Path) -> dict[str, float]:
    """What orch admits jobs against on that cluster started empty (head with no CPUs): all the autoscaler adds."""
    types, limit = read_node_types(path)
    return grow({"CPU": 0.0, "GPU": 0.0}, types, Counter(), limit).ceiling


def test_gpu_workers_scale_from_zero_with_the_autoscaler_and_fit_the_gpu_example():
    cluster = _by_kind("RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert all(g["minReplicas"] == 0 for g in cluster["spec"]["workerGroupSpecs"])
    spec = load_spec_file(GPU_EXAMPLE)
    ceiling = _ceiling(CLUSTER / "kuberay" / "raycluster.yaml")
    assert ceiling["GPU"] >= spec.scaling.num_workers * spec.scaling.worker_gpus
    assert ceiling["CPU"] >= spec.scaling.num_workers * spec.scaling.cpus_per_worker
    env = {e["name"]: e for e in cluster["spec"]["autoscalerOptions"]["env"]}  # the autoscaler talks to the GCS
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_every_ray_container_uses_token_auth_from_a_secret():
    for where, container in _containers():
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and "value" not in env["RAY_AUTH_TOKEN"], where


def test_ray_nodes_get_s3_settings_from_configmap_and_credentials_from_a_secret():
    config = _by_kind("ConfigMap")
    assert "AWS_ENDPOINT_URL" in config["data"]
    assert not any(SECRET_ENV_NAME.search(key) for key in config["data"]), "credentials belong in a Secret"
    for where, container in _containers():
        if where == "RayJob submitter":
            continue  # it only runs `ray job submit`; storage is used by the head and workers
        sources = container["envFrom"]
        assert {"name": config["metadata"]["name"]} in [s.get("configMapRef") for s in sources], where
        assert any(s.get("secretRef", {}).get("name") for s in sources), where


def test_no_secret_values_inlined_anywhere():
    for path in [*KUBERAY, AWS_CONFIG, DOCKERFILE, GPU_EXAMPLE]:
        text = path.read_text()
        for pattern in SECRET_VALUE_PATTERNS:
            assert not pattern.search(text), f"{path.name}: looks like an inlined secret: {pattern.pattern}"
        for doc in _docs(path) if path.suffix == ".yaml" else []:
            assert doc.get("kind") != "Secret", f"{path.name}: create Secrets with kubectl, not in a file"
    for where, container in _containers():
        for entry in container.get("env", []):
            if SECRET_ENV_NAME.search(entry["name"]):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (where, entry["name"])


def test_rayjob_runs_orch_submit_against_the_clusters_head_service():
    cluster, job = _by_kind("RayCluster"), _by_kind("RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["orch", "submit"]
    args = build_parser().parse_args(argv[1:])  # orch's own parser accepts it
    assert args.address == f"http://{cluster['metadata']['name']}-head-svc:8265" and args.wait
    spec_in_repo = REPO / Path(args.spec).relative_to(IMAGE_SOURCE)
    spec = load_spec_file(spec_in_repo, args.set or [])
    assert spec.scaling.use_gpu and spec.storage and spec.storage.startswith("s3://")


def test_images_and_ray_versions_agree():
    cluster = _by_kind("RayCluster")
    images = {c["image"] for _, c in _containers()}
    assert len(images) == 1, images
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base, "Dockerfile must name its base image"
    aws_image = yaml.safe_load(AWS_CONFIG.read_text())["docker"]["image"]
    assert cluster["spec"]["rayVersion"] == _ray_version_of(base.group(1)) == _ray_version_of(aws_image)
    assert cluster["spec"]["rayVersion"] == ray.__version__  # the version the tests here run


def test_dockerfile_installs_cuda_torch_then_this_repository():
    text = DOCKERFILE.read_text()
    torch_line = text.index('pip install --no-cache-dir "torch==2.13.0" --index-url')
    assert "download.pytorch.org/whl/cu" in text
    copy_line = text.index(f"COPY --chown=ray:users . {IMAGE_SOURCE}")
    install_line = text.index(f"pip install --no-cache-dir {IMAGE_SOURCE}")
    assert torch_line < copy_line < install_line


# ---- AWS cluster launcher ----------------------------------------------------------------------------------------
def _aws() -> dict[str, Any]:
    return yaml.safe_load(AWS_CONFIG.read_text())


def _ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it talks to AWS: defaults filled in, then Ray's schema and rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_passes_rays_own_validation():
    prepared = _ray_validate(_aws())
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_rays_validation_catches_mistakes_in_the_aws_config():
    misspelt = _aws()
    misspelt["setup_comands"] = misspelt.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        _ray_validate(misspelt)
    too_small = _aws()
    too_small["available_node_types"]["gpu_g5"]["min_workers"] = 2
    too_small["max_workers"] = 1  # below the sum of min_workers
    with pytest.raises(ValueError, match="max_workers"):
        _ray_validate(too_small)


def test_aws_gpu_node_types_use_instance_profiles_not_keys():
    config = _aws()
    types = config["available_node_types"]
    instance_types = {t["node_config"]["InstanceType"].split(".")[0] for t in types.values()}
    assert {"g5", "p4d", "p5"} <= instance_types
    for name, node_type in types.items():
        assert node_type["node_config"]["IamInstanceProfile"]["Name"], name
    text = AWS_CONFIG.read_text()
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    spec = load_spec_file(GPU_EXAMPLE)
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert all(t["min_workers"] == 0 for t in workers)  # GPU nodes scale from zero
    assert _ceiling(AWS_CONFIG)["GPU"] >= spec.scaling.num_workers * spec.scaling.worker_gpus


def test_aws_setup_installs_this_repository_and_starts_ray_with_token_auth():
    config = _aws()
    mounted = {remote: local for remote, local in config["file_mounts"].items()}
    repo_on_node = next(remote for remote, local in mounted.items() if local == ".")
    assert any(cmd.startswith("pip install") and cmd.endswith(f"-e {repo_on_node}") for cmd in config["setup_commands"])
    assert mounted["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # the token travels as a file, not in here
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(cmd for cmd in config[key] if "ray start" in cmd)
        assert "RAY_AUTH_MODE=token ray start" in start, key

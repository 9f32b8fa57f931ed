"""deploy/kubernetes/ is valid: every object against its schema, and the parts agree.

- Kubernetes objects: kubernetes-validate's bundled schemas of K8S_VERSION, strict (an
  unknown field is an error, as `kubectl apply --validate=strict` makes it).
- The KEDA ScaledObject: the openAPIV3Schema of KEDA's CRD at a pinned release
  (tests/data/, header says where from), made strict the same way (the API server would
  prune an unknown field silently, which is how a misspelt trigger option goes unnoticed).
  The CRD's CEL rules (x-kubernetes-validations) are not evaluated here.
- Cross-references: the pipeline file in the ConfigMap is a valid steadyflow config that
  workers on many hosts can share, every ${VAR} it uses is a key of the Secret, the KEDA
  trigger reads the pipeline's stream and steadyflow's durable consumer, the names and
  selectors between Deployment, PDB, ScaledObject and Service match.
Each validator is shown to refuse a broken manifest (the `broken` cases), so a green run
means the manifests were checked, not that nothing was.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from steadyflow.buffer.jetstream import CONSUMER
from steadyflow.config import load_config
from steadyflow.run.worker import check_shareable

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KEDA_CRD = ROOT / "tests" / "data" / "keda.sh_scaledobjects.v2.20.2.yaml"
K8S_VERSION = "1.33"  # the oldest Kubernetes minor the manifests are meant for


def objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused: every object schema that lists its
    properties and says nothing of others (and does not preserve unknown fields) gets
    additionalProperties: false."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def keda_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def validate(doc: dict[str, Any]) -> None:
    """Raise if `doc` does not fit its schema."""
    if doc["apiVersion"].startswith("keda.sh/"):
        assert doc["apiVersion"] == "keda.sh/v1alpha1" and doc["kind"] == "ScaledObject"
        keda_validator().validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- every object against its schema --------------------------------------------------------
def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


@pytest.mark.parametrize("doc", objects(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_object_fits_its_schema(doc: dict[str, Any]) -> None:
    validate(doc)


def _break(kind: str, name: str, change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(find(objects(), kind, name))
    change(doc)
    return doc


def _worker_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


BROKEN = {
    "misspelt pod field": ("Deployment", "steadyflow-worker", lambda d: _worker_spec(d).update(
        terminationGracePeriodSecond=150)),
    "replicas not an integer": ("Deployment", "steadyflow-worker",
                                lambda d: d["spec"].update(replicas="two")),
    "probe without a handler port": ("Deployment", "steadyflow-worker", lambda d: _worker_spec(
        d)["containers"][0]["livenessProbe"]["httpGet"].pop("port")),
    "PDB field of another kind": ("PodDisruptionBudget", "steadyflow-worker",
                                  lambda d: d["spec"].update(replicas=1)),
    "ScaledObject HPA spelling": ("ScaledObject", "steadyflow-worker",
                                  lambda d: d["spec"].update(minReplicas=1)),
    "trigger metadata not a string": ("ScaledObject", "steadyflow-worker",
                                      lambda d: d["spec"]["triggers"][0]["metadata"].update(
                                          lagThreshold=8)),
    "trigger without a type": ("ScaledObject", "steadyflow-worker",
                               lambda d: d["spec"]["triggers"][1].pop("type")),
    "no scale target": ("ScaledObject", "steadyflow-worker",
                        lambda d: d["spec"].pop("scaleTargetRef")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_manifest_is_refused(case: str) -> None:
    kind, name, change = BROKEN[case]
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(_break(kind, name, change))


# --- the parts agree ---------------------------------------------------------------------------
def pipeline_text() -> str:
    return find(objects(), "ConfigMap", "steadyflow-pipeline")["data"]["pipeline.yml"]  # type: ignore[no-any-return]


def test_the_pipeline_file_is_valid_shareable_and_its_secrets_come_from_the_secret(
        tmp_path: Path) -> None:
    docs = objects()
    secret = find(docs, "Secret", "steadyflow-secrets")
    text = pipeline_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used and used <= set(secret["stringData"]), used - set(secret["stringData"])
    for line in text.splitlines():  # secrets only as references
        assert not re.search(r"(password|secret|token)\w*:\s*['\"]?[^$'\"\s]", line, re.I), line
    path = tmp_path / "pipeline.yml"
    path.write_text(text)
    config = load_config(path, env={name: "x" for name in used})
    assert check_shareable(config) == []  # workers on many hosts: no one-host part

    for name in ("steadyflow-worker", "steadyflow-status"):
        pod = _worker_spec(find(docs, "Deployment", name))
        (container,) = pod["containers"]
        assert {"secretRef": {"name": "steadyflow-secrets"}} in container["envFrom"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["pipeline"]["configMap"]["name"] == "steadyflow-pipeline"
        config_path = container["args"][container["args"].index("-c") + 1]
        assert config_path == f"{mounts['pipeline']}/pipeline.yml"
        assert str(config.state_dir) == mounts["scratch"]  # writable: the root fs is not


def test_the_worker_deployment_drains_and_is_probed_on_its_serve_port() -> None:
    docs = objects()
    deployment = find(docs, "Deployment", "steadyflow-worker")
    pod = _worker_spec(deployment)
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("worker") - 2:args.index("worker")] == ["--log-level", "info"]
    serve = args[args.index("--serve") + 1]
    port = int(serve.rpartition(":")[2])
    assert "--insecure" in args  # a non-loopback --serve is refused without it or a token
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert http["containerPort"] == port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # SIGTERM drains: longer than a source statement may take, so the unit in hand finishes
    assert pod["terminationGracePeriodSeconds"] >= 60
    pdb = find(docs, "PodDisruptionBudget", "steadyflow-worker")
    labels = pod.get("labels") or deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    status = find(docs, "Service", "steadyflow-status")
    status_pods = find(docs, "Deployment", "steadyflow-status")["spec"]["template"]
    assert status["spec"]["selector"].items() <= status_pods["metadata"]["labels"].items()
    assert not status["spec"]["selector"].items() <= labels.items()  # workers are not it


def test_the_scaledobject_reads_the_pipelines_stream_consumer_and_lag() -> None:
    docs = objects()
    scaled = find(docs, "ScaledObject", "steadyflow-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "steadyflow-worker"
    find(docs, "Deployment", spec["scaleTargetRef"]["name"])
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    pipeline = yaml.safe_load(pipeline_text())
    triggers = {t["type"]: t["metadata"] for t in spec["triggers"]}
    jet = triggers["nats-jetstream"]
    assert jet["stream"] == pipeline["buffer"]["stream"]
    assert jet["consumer"] == CONSUMER
    nats_host = re.sub(r"^nats://|:\d+$", "", pipeline["buffer"]["url"])
    assert jet["natsServerMonitoringEndpoint"].split(":")[0] == nats_host
    prom = triggers["prometheus"]
    assert re.search(r"\bsteadyflow_lag_seconds\{[^}]*pipeline=\"" + pipeline["name"] + '"',
                     prom["query"])
    assert float(prom["threshold"]) > 0

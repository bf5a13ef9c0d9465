"""Each overlay, rendered by kustomize, passes `kubernetes-validate --strict`; the validator is
shown to reject bad manifests, so a pass means something."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from tests.deploy.kube import kustomize_argv, load_file, render_text
from tests.deploy.tools import K8S, OVERLAYS, environment_tool, output, run

# The oldest Kubernetes the manifests target, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# CRDs (KEDA, Prometheus Operator): their fields are checked in tests/deploy/test_kubernetes.py.
NO_SCHEMA = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "PodMonitor")}


def validate(manifest_text: str, cwd: Path) -> tuple[int, str]:
    """One run per version: the validator reads stdin once, whatever the number of -k."""
    code, reports = 0, []
    for version in KUBERNETES_VERSIONS:
        result = run(
            [environment_tool("kubernetes-validate"), "--strict", "-k", version, "-"],
            cwd=cwd,
            stdin=manifest_text,
        )
        code |= result.returncode
        reports.append(output(result))
    return code, "\n".join(reports)


def base_files() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [K8S / "base" / name for name in kustomization["resources"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_validation(overlay: str, tmp_path: Path) -> None:
    if kustomize_argv(K8S / "overlays" / overlay) is None:
        warnings.warn(
            "kubectl not found: validating the base files directly, not the rendered overlays",
            stacklevel=1,
        )
        text = "\n---\n".join(path.read_text() for path in base_files())
    else:
        text = render_text(overlay)
    code, report = validate(text, tmp_path)
    assert code == 0, report
    assert "ERROR" not in report, report
    # A kind without a schema only warns: make sure every kind but the CRD really was checked.
    rendered = [doc for doc in yaml.safe_load_all(text) if doc]
    for doc in rendered:
        if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
            continue
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        assert report.count(f"passed for resource {name} ") == len(KUBERNETES_VERSIONS), report
    assert report.count("WARN") == len(KUBERNETES_VERSIONS) * sum(
        (doc["apiVersion"], doc["kind"]) in NO_SCHEMA for doc in rendered
    ), report


def test_secret_example_passes_strict_validation(tmp_path: Path) -> None:
    code, report = validate((K8S / "secret.example.yaml").read_text(), tmp_path)
    assert code == 0, report
    assert "passed for resource secret/backend-secrets" in report


BAD_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: bad}}
  template:
    metadata:
      labels: {{app: bad}}
    spec:
      containers:
        - name: bad
          image: example/bad:1
          {extra}
"""


@pytest.mark.parametrize(
    ("replicas", "extra"),
    [
        ('"two"', "imagePullPolicy: IfNotPresent"),  # wrong type
        ("2", "imagePulPolicy: IfNotPresent"),  # unknown field: rejected by --strict only
    ],
    ids=["wrong-type", "unknown-field"],
)
def test_validator_rejects_a_bad_manifest(replicas: str, extra: str, tmp_path: Path) -> None:
    code, report = validate(BAD_DEPLOYMENT.format(replicas=replicas, extra=extra), tmp_path)
    assert code != 0, report
    assert "ERROR" in report, report


def test_validator_accepts_the_good_variant(tmp_path: Path) -> None:
    """The bad manifests fail for the planted fault, not for something else."""
    good = BAD_DEPLOYMENT.format(replicas="2", extra="imagePullPolicy: IfNotPresent")
    code, report = validate(good, tmp_path)
    assert code == 0, report


def test_base_files_parse() -> None:
    for path in base_files():
        assert load_file(path), f"{path.name} holds no manifest"

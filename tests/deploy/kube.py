"""Rendering the kustomize overlays, and reading the rendered objects."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import yaml

from tests.deploy.tools import K8S, output, run

Manifest: TypeAlias = dict[str, Any]

TASK_TIME_LIMIT_SECONDS = 360
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}


def kustomize_argv(path: Path) -> list[str] | None:
    """kubectl's built-in kustomize, else a standalone kustomize, else None."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize", str(path)]
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build", str(path)]
    return None


@cache
def render_text(overlay: str) -> str:
    argv = kustomize_argv(K8S / "overlays" / overlay)
    if argv is None:
        pytest.fail("neither kubectl nor kustomize is on PATH: the overlays cannot be rendered")
    result = run(argv)
    assert result.returncode == 0, output(result)
    return result.stdout


def render(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


def load_file(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def pod_template(workload: Manifest) -> Manifest:
    template: Manifest = workload["spec"]["template"]
    return template


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for manifest in manifests:
        if manifest["kind"] in POD_KINDS:
            yield f"{manifest['kind']}/{manifest['metadata']['name']}", pod_template(manifest)


def container(workload: Manifest, index: int = 0) -> Manifest:
    containers: list[Manifest] = pod_template(workload)["spec"]["containers"]
    return containers[index]


def config_map(manifests: list[Manifest]) -> dict[str, str]:
    maps = [
        m
        for m in of_kind(manifests, "ConfigMap")
        if m["metadata"]["name"].startswith("backend-config")
    ]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data

"""Every rendered object is valid: built-in kinds against the Kubernetes 1.35 schemas (kubernetes-validate
--strict), custom resources against the KEDA and prometheus-operator CRDs in ../shared/crds."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import CRDS, SCENARIOS, Helm, Renders, venv_tool

CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def test_crds_present() -> None:
    names = {p.name for p in CRDS.glob("*.yaml")}
    for needed in (
        "keda.sh_scaledobjects.yaml",
        "keda.sh_triggerauthentications.yaml",
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ):
        assert needed in names, f"{needed} missing from {CRDS}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kubernetes_validate_strict(helm4: Helm, renders: Renders, scenario: str, tmp_path: Path) -> None:
    builtin = [d for d in renders.docs(helm4, scenario) if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert builtin
    path = tmp_path / f"{scenario}.yaml"
    path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    proc = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.35.0", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = out.count(" passed for resource ")
    assert passed == len(builtin), out
    assert "ERROR" not in out, out
    assert "WARN" not in out, out


def _strict(schema: Any) -> Any:
    """The CRD's openAPIV3Schema as JSON Schema that, like the API server's pruning + strict field validation,
    rejects unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from every CRD in ../shared/crds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                props = schema.setdefault("properties", {})
                # apiVersion/kind/metadata are checked by the API server itself; keep metadata a mapping
                props["metadata"] = {"type": "object"}
                out[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_crds(helm4: Helm, renders: Renders, scenario: str) -> None:
    schemas = crd_schemas()
    custom = [d for d in renders.docs(helm4, scenario) if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    for doc in custom:
        key = (doc["apiVersion"], doc["kind"])
        assert key in schemas, f"no CRD for {key} in {sorted(schemas)}"
        errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc), key=str)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_crd_validation_catches_mistakes() -> None:
    """The strict CRD check itself rejects an unknown field and a wrong type."""
    schema = crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "w"}, "triggers": [{"type": "redis", "metadata": {"listName": "q"}}]},
    }
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(good))
    bad = copy.deepcopy(good)
    bad["spec"]["minReplicas"] = 0  # the field is minReplicaCount
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
    bad = copy.deepcopy(good)
    bad["spec"]["triggers"][0]["metadata"]["listLength"] = 5  # trigger metadata values are strings
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_every_scenario_renders_custom_resources_somewhere(helm4: Helm, renders: Renders) -> None:
    kinds = {d["kind"] for s in SCENARIOS for d in renders.docs(helm4, s) if d["apiVersion"].startswith(CUSTOM_GROUPS)}
    assert kinds == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}

"""Generate the MTPTrainingJob CustomResourceDefinition from the pydantic models.

The pydantic JSON schema is turned into a *structural* openAPIV3Schema, the dialect the API server
accepts: every ``$ref`` inlined, ``Optional`` expressed by leaving a field out of ``required``,
enums inlined, ``exclusiveMinimum`` in its OpenAPI 3.0 boolean form, ``int | str`` as
``x-kubernetes-int-or-string`` and nested objects that pydantic builds by default given
``default: {}`` so that the API server defaults them the same way pydantic does.

``python -m mtp_api.crd --write`` rewrites ``crds/`` and the chart's copy; a test fails when the
checked-in files differ from this output.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from mtp_api import contracts
from mtp_api import types as t

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE_NAME = f"{t.PLURAL}.{t.GROUP}.yaml"
CRD_PATHS = (
    REPO_ROOT / "crds" / CRD_FILE_NAME,
    REPO_ROOT / "charts" / "mtp-operator" / "crds" / CRD_FILE_NAME,
)

_DROP_KEYS = {"title", "additionalProperties", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref, recursively."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one resolved pydantic schema node into a structural OpenAPI v3 node."""
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if node.pop("x-kubernetes-int-or-string", False) or {o.get("type") for o in options} == {
            "integer",
            "string",
        }:
            node = {**{k: v for k, v in node.items() if k not in ("type",)}, "x-kubernetes-int-or-string": True}
            return {k: v for k, v in node.items() if k not in _DROP_KEYS}
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = _structural(options[0])
        outer = {k: v for k, v in node.items() if k not in _DROP_KEYS}
        if outer.get("default", "x") is None:
            outer.pop("default")
        return {**inner, **outer}
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            node["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            node[bound] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "properties":
            props = {name: _structural(child) for name, child in value.items()}
            required = set(node.get("required", []))
            for name, child in props.items():
                if name not in required and child.get("type") == "object" and "properties" in child:
                    if "default" not in child and not child.get("required") and not _was_optional(value[name]):
                        child["default"] = {}
            out[key] = props
        elif key == "additionalProperties":
            out[key] = _structural(value)
        elif key == "items":
            out[key] = _structural(value)
        else:
            out[key] = value
    if node.get("type") == "object" and "additionalProperties" in out and "default" not in out:
        if not node.get("required"):
            out["default"] = {}
    return out


def _was_optional(node: dict[str, Any]) -> bool:
    """True for ``X | None`` fields: those stay absent, like pydantic's None."""
    return any(o.get("type") == "null" for o in node.get("anyOf", []))


def _model_schema(model: type[t.ApiModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _strip_defaults(node: Any) -> Any:
    """Status is written by the operator alone; defaults there would only mask a missing write."""
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def open_api_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema for the one served version."""
    spec = _model_schema(t.MTPTrainingJobSpec)
    status = _strip_defaults(_model_schema(t.MTPTrainingJobStatus))
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": "MTPTrainingJob trains a Multi-Token Prediction model and serves it with MTP speculative decoding.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.metadata.name.size() <= 40",
                "message": "metadata.name must be at most 40 characters: pod names append -trainer-N and a hash",
            }
        ],
    }


PRINTER_COLUMNS = [
    {"name": "Pipeline", "type": "string", "jsonPath": ".spec.pipeline"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.trainer.mtp.trainingMode"},
    {"name": "State", "type": "string", "jsonPath": ".status.state"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.trainer.step"},
    {"name": "Acceptance", "type": "number", "jsonPath": ".status.rollout.acceptanceRate"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{t.PLURAL}.{t.GROUP}",
            "labels": {contracts.LABEL_NAME: "mtp-operator", contracts.LABEL_COMPONENT: "crd"},
        },
        "spec": {
            "group": t.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": t.KIND,
                "listKind": f"{t.KIND}List",
                "plural": t.PLURAL,
                "singular": t.SINGULAR,
                "shortNames": list(t.SHORT_NAMES),
                "categories": ["all", "mtp"],
            },
            "versions": [
                {
                    "name": t.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `python -m mtp_api.crd --write` from api/mtp_api/types.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = crd_yaml()
    if "--write" in argv:
        for path in CRD_PATHS:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

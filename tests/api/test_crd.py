"""The checked-in CRD is the generator's output, and it is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from mtp_api import crd as gen


def test_checked_in_crds_match_the_generator() -> None:
    expected = gen.crd_yaml()
    for path in gen.CRD_PATHS:
        assert path.is_file(), f"{path} missing: run `python -m mtp_api.crd --write`"
        assert path.read_text() == expected, f"{path} is stale: run `python -m mtp_api.crd --write`"


def _walk(node: Any, path: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            _walk(v, f"{path}.{k}", out)
        if isinstance(node.get("items"), dict):
            _walk(node["items"], f"{path}[]", out)
        if isinstance(node.get("additionalProperties"), dict):
            _walk(node["additionalProperties"], f"{path}{{}}", out)


def test_schema_is_structural() -> None:
    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(gen.open_api_schema(), "", nodes)
    assert len(nodes) > 80
    for path, node in nodes:
        text = yaml.safe_dump(node)
        assert "$ref" not in text and "$defs" not in text, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false is not structural"
        if not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
            assert "anyOf" not in node, f"{path}: unions are not structural"
        if isinstance(node.get("exclusiveMinimum"), float | int) and not isinstance(node["exclusiveMinimum"], bool):
            raise AssertionError(f"{path}: exclusiveMinimum must be the OpenAPI 3.0 boolean form")


def test_crd_shape() -> None:
    c = gen.crd()
    version = c["spec"]["versions"][0]
    assert c["metadata"]["name"] == "mtptrainingjobs.mtp.io"
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [col["name"] for col in version["additionalPrinterColumns"]] == [
        "Pipeline", "Mode", "State", "Step", "Acceptance", "Age",
    ]  # fmt: skip
    assert "mtpjob" in c["spec"]["names"]["shortNames"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    mode = spec["properties"]["trainer"]["properties"]["mtp"]["properties"]["trainingMode"]
    assert mode["enum"] == ["disabled", "standalone", "joint"] and mode["default"] == "disabled"
    scale = spec["properties"]["trainer"]["properties"]["mtp"]["properties"]["lossScalingFactor"]
    assert scale["default"] == 0.3 and scale["minimum"] == 0.0
    rules = [v["rule"] for v in spec["x-kubernetes-validations"]]
    assert any("rlvr" in r for r in rules) and any("mtpNumLayers" in r for r in rules)
    trainer_rules = [v["rule"] for v in spec["properties"]["trainer"]["x-kubernetes-validations"]]
    assert any("tensorParallelSize * self.strategy.pipelineParallelSize" in r for r in trainer_rules)
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]

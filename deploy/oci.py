#!/usr/bin/env python3
"""`make oci`: packages the release module and the lean one as an OCI image layout that Istio's
WasmPlugin pulls: tag `<version>` is the default build, `<version>-lean` the `make lean` one.

Istio accepts a Wasm module as an image with a single layer holding `plugin.wasm` (the "compat"
Docker/OCI variant). This writes that image as an OCI image layout directory
(`oci-layout`, `index.json`, `blobs/sha256/…`) with the standard library only; push it with any
OCI tool, e.g. `skopeo copy oci:target/oci:0.1.0 docker://registry.example.com/token-exchange-wasm:0.1.0`.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/token_exchange_wasm.wasm")
LEAN_WASM = os.path.join(ROOT, "target/lean/wasm32-wasip1/release/token_exchange_wasm.wasm")
OUT = os.path.join(ROOT, "target/oci")


def blob(data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(OUT, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image(path: str, tag: str) -> dict:
    """Writes the blobs of one image holding the module at `path`; its index entry."""
    module = open(path, "rb").read()
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(module), 0o444, 0
        tar.addfile(info, io.BytesIO(module))
    raw = tar_bytes.getvalue()
    layer = blob(gzip.compress(raw, mtime=0))
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    config = blob(json.dumps({"architecture": "wasm", "os": "wasip1",
                              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}]}
    m = blob(json.dumps(manifest).encode())
    print(f"  tag {tag}: manifest {m['digest']}, {len(module)} byte module")
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
            "annotations": {"org.opencontainers.image.ref.name": tag}}


def main(version: str) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "blobs", "sha256"))
    print(f"OCI image layout at {os.path.relpath(OUT, ROOT)}; pin a tag by its manifest digest "
          f"(url: oci://<registry>/token-exchange-wasm@sha256:…):")
    manifests = [image(WASM, version), image(LEAN_WASM, f"{version}-lean")]
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f)
    with open(os.path.join(OUT, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "0.1.0")

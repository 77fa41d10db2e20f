"""A read-only Docker registry (HTTP API v2) serving one image, for the daemon's pull test.

No registry is reachable from the test machine, so the test saves a local image with
``docker save`` and serves it here on 127.0.0.1 (which the engine treats as an insecure
registry): ``GET /v2/``, the image's manifest (schema 2) by tag or digest, and its blobs.
Prints ``PORT`` on stdout once listening; serves until killed.

Usage: python3 registry.py SAVED.tar NAME TAG
"""

import hashlib
import http.server
import json
import sys
import tarfile

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar"


def load(path):
    """Blobs by digest and the manifest of the single image in a ``docker save`` archive."""
    blobs = {}
    with tarfile.open(path) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))

        def add(member):
            data = tar.extractfile(member).read()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            return digest, len(data)

        config_digest, config_size = add(entry["Config"])
        layers = [add(layer) for layer in entry["Layers"]]
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "size": config_size, "digest": config_digest},
        "layers": [{"mediaType": LAYER, "size": size, "digest": digest} for digest, size in layers],
    }).encode()
    return blobs, manifest


def main():
    saved, name, tag = sys.argv[1:4]
    blobs, manifest = load(saved)
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status, body=b"", content_type="application/json", digest=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path in ("/v2", "/v2/"):
                return self._send(200, b"{}")
            prefix = f"/v2/{name}/"
            if not path.startswith(prefix):
                return self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            rest = path[len(prefix):]
            if rest in (f"manifests/{tag}", f"manifests/{manifest_digest}"):
                return self._send(200, manifest, MANIFEST, manifest_digest)
            if rest.startswith("blobs/") and rest[6:] in blobs:
                digest = rest[6:]
                return self._send(200, blobs[digest], "application/octet-stream", digest)
            return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

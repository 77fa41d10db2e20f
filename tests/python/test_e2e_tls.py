"""TLS end to end from Python: a coordinator and node serving HTTPS with a certificate signed by
a test CA (made with the ``openssl`` CLI); ``remote_parallel_map`` through the coordinator with
``FLEETMAP_CA_FILE`` naming that CA, and ``CertificateNotTrusted`` saying what to set without
it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fleetmap import errors, remote_parallel_map

import e2e_support
import hardening_support


def square(x):
    return x * x


def make_pki(dir: Path) -> dict:
    """A CA and a server certificate for localhost and 127.0.0.1 it signed, as PEM files."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS suite makes its certificates with the openssl CLI; ./scripts/setup installs it")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=dir, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fleetmap pytest CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=localhost")
    (dir / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "cert.pem", "-days", "2", "-extfile", "server.ext")
    return {name: dir / f"{name}.pem" for name in ("ca", "cert", "key")}


@pytest.fixture
def tls_fleet(tmp_path, monkeypatch):
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(f"the end-to-end suite runs the real binaries: {missing}")
    pki = make_pki(tmp_path)
    flags = ["--tls-cert-file", str(pki["cert"]), "--tls-key-file", str(pki["key"]),
             "--tls-ca-file", str(pki["ca"])]
    coordinator = hardening_support.coordinator(tmp_path, *flags).start()
    assert coordinator.url.startswith("https://"), coordinator.url
    node = hardening_support.node(tmp_path, "tls-py", coordinator.url, *flags).start()
    monkeypatch.setenv("FLEETMAP_COORDINATOR", coordinator.url)
    monkeypatch.setenv("FLEETMAP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETMAP_CA_FILE", str(pki["ca"]))
    monkeypatch.delenv("FLEETMAP_API_KEY", raising=False)
    from fleetmap import config, transport

    endpoint = config.resolve(None, start_local=False)[0]
    deadline = time.monotonic() + 30
    while not any(n["node_id"] == "tls-py" and n["alive"]
                  for n in transport.request_json(endpoint, "GET", "/v1/nodes")):
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    try:
        yield pki, coordinator
    finally:
        node.stop()
        coordinator.stop()


def test_a_map_runs_through_a_tls_coordinator_that_the_ca_file_vouches_for(tls_fleet):
    assert remote_parallel_map(square, range(30)) == [x * x for x in range(30)]


def test_without_the_ca_file_the_certificate_is_not_trusted_and_the_error_says_what_to_set(tls_fleet, monkeypatch, tmp_path):
    monkeypatch.delenv("FLEETMAP_CA_FILE")
    with pytest.raises(errors.CertificateNotTrusted) as refused:
        remote_parallel_map(square, range(3))
    message = str(refused.value)
    assert "set FLEETMAP_CA_FILE to the CA that signed the coordinator's certificate" in message, message
    assert isinstance(refused.value, errors.FleetmapConnectionError)

    # A CA file that is not one is refused by name before anything is sent.
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    monkeypatch.setenv("FLEETMAP_CA_FILE", str(garbage))
    with pytest.raises(errors.InvalidArgument) as bad:
        remote_parallel_map(square, range(3))
    assert "FLEETMAP_CA_FILE" in str(bad.value) and str(garbage) in str(bad.value), str(bad.value)

    # With the right one it works again in the same process.
    monkeypatch.setenv("FLEETMAP_CA_FILE", str(tls_fleet[0]["ca"]))
    assert remote_parallel_map(square, range(4)) == [0, 1, 4, 9]

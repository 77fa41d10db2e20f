"""The environment field: Dockerfile context collection and the clone's distribution list."""

from __future__ import annotations

import base64
import os

import pytest

from fleetmap import environment
from fleetmap.errors import InvalidArgument


def _files(env):
    return {f["path"]: base64.b64decode(f["data_b64"]) for f in env["context"]}


def test_dockerfile_context_holds_exactly_what_copy_and_add_use(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "sub").mkdir()
    (tmp_path / "app" / "sub" / "x.txt").write_text("x")
    (tmp_path / "req.txt").write_text("six\n")
    (tmp_path / "a.whl").write_bytes(b"w1")
    (tmp_path / "b.whl").write_bytes(b"w2")
    (tmp_path / "unused.bin").write_bytes(b"no")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "# comment\n"
        "FROM fleetmap/base:1 AS build\n"
        "COPY --chown=0:0 req.txt \\\n  /tmp/\n"
        'COPY ["app", "/opt/app"]\n'
        "ADD *.whl /wheels/\n"
        "ADD https://example.com/x.tar.gz /x/\n"
        "COPY --from=build /etc/hosts /h\n"
    )
    env = environment.resolve(str(dockerfile), None)
    assert env["kind"] == "dockerfile"
    assert env["content"] == dockerfile.read_text()
    assert _files(env) == {
        "req.txt": b"six\n",
        "app/main.py": b"print(1)\n",
        "app/sub/x.txt": b"x",
        "a.whl": b"w1",
        "b.whl": b"w2",
    }


def test_dockerfile_sources_must_exist_and_stay_inside(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x\nCOPY missing.txt /\n")
    with pytest.raises(InvalidArgument, match="missing.txt"):
        environment.resolve(str(dockerfile), None)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret")
    try:
        dockerfile.write_text(f"FROM x\nCOPY ../{outside.name} /\n")
        with pytest.raises(InvalidArgument, match="outside its directory"):
            environment.resolve(str(dockerfile), None)
    finally:
        os.unlink(outside)


def test_pip_options_are_refused_in_packages():
    with pytest.raises(InvalidArgument, match="pip option"):
        environment.resolve(None, ["--index-url=http://x"])


def test_the_clone_skips_local_installs(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "localpkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: localpkg\nVersion: 1.0\n")
    (dist / "direct_url.json").write_text('{"url": "file:///src/localpkg", "dir_info": {"editable": true}}')
    pinned = site / "pinnedpkg-2.0.dist-info"
    pinned.mkdir()
    (pinned / "METADATA").write_text("Metadata-Version: 2.1\nName: pinnedpkg\nVersion: 2.0\n")
    monkeypatch.syspath_prepend(str(site))
    dists = environment.installed_distributions()
    assert "pinnedpkg==2.0" in dists
    assert not any(d.startswith("localpkg") for d in dists)


def test_a_clone_call_checks_sys_path_once(monkeypatch):
    """The pins and the local modules come from one look at sys.path (a stat per entry)."""
    stamps = []
    real = environment._sys_path_stamp

    def counting():
        stamps.append(1)
        return real()

    monkeypatch.setattr(environment, "_sys_path_stamp", counting)
    monkeypatch.delenv(environment.ENV_CLONE, raising=False)
    assert environment.resolve(None, None)["kind"] == "clone"
    assert len(stamps) == 1


def test_the_distribution_scan_runs_once_per_sys_path_state(tmp_path, monkeypatch):
    """Reading every distribution's metadata costs tens of ms: warm calls must not repeat it."""
    import importlib.metadata as metadata

    calls = []
    real = metadata.distributions

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(metadata, "distributions", counting)
    monkeypatch.syspath_prepend(str(tmp_path))
    first = environment.installed_distributions()
    assert environment.clone()["distributions"] == first
    assert environment.installed_distributions() == first
    assert len(calls) == 1, "one scan serves both lists and later calls"

    pkg = tmp_path / "laterpkg-3.0.dist-info"
    pkg.mkdir()
    (pkg / "METADATA").write_text("Metadata-Version: 2.1\nName: laterpkg\nVersion: 3.0\n")
    os.utime(tmp_path, ns=(1, 1))  # a distribution installed later changes its directory's mtime
    assert "laterpkg==3.0" in environment.installed_distributions()
    assert len(calls) == 2

"""Limits a client can hit, end to end through the real binaries: jobs per client (429 with a
sentence while the first job streams, room again once it ended)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import e2e_support
import hardening_support as hs
from fleetmap import CoordinatorError, remote_parallel_map

SLOW_CLIENT = textwrap.dedent(
    """
    import sys
    from fleetmap import remote_parallel_map

    def nap(x):
        import time
        time.sleep(x)
        return x

    print(remote_parallel_map(nap, [4.0]))
    """
)


@pytest.mark.deadline(120)
def test_jobs_beyond_the_per_client_limit_get_429_then_room_comes_back(tmp_path):
    missing = e2e_support.binaries_missing()
    if missing:
        pytest.fail(missing)
    coord = hs.coordinator(tmp_path, "--max-jobs-per-client", "1").start()
    node = hs.node(tmp_path, "perclient", coord.url).start()
    saved = os.environ.get("FLEETMAP_COORDINATOR")
    os.environ["FLEETMAP_COORDINATOR"] = coord.url
    first = None
    try:
        env = dict(os.environ)
        first = subprocess.Popen([sys.executable, "-c", SLOW_CLIENT], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert e2e_support.wait_until(
            lambda: any(j["state"] == "running" for j in coord.get_json("/v1/jobs")), 30, 0.05)
        with pytest.raises(CoordinatorError) as caught:
            remote_parallel_map(abs, [-1])
        err = caught.value
        assert err.status == 429 and err.code == "too_many", (err.status, err.code)
        assert "already has 1 jobs streaming results" in str(err), str(err)
        out, stderr = first.communicate(timeout=60)
        assert first.returncode == 0 and out.strip() == "[4.0]", stderr
        # The first job's stream has ended: the client may run a job again.
        assert remote_parallel_map(abs, [-1]) == [1]
    finally:
        if saved is None:
            os.environ.pop("FLEETMAP_COORDINATOR", None)
        else:
            os.environ["FLEETMAP_COORDINATOR"] = saved
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()
        node.stop()
        coord.stop()
        hs.remove_cgroup_parent("perclient")

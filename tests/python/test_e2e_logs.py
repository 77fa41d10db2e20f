"""``fleetmap logs JOB`` through the real binaries: what a job's inputs printed comes back after
the job ended, attributed like live output (``[input 3] ...``, stdout to stdout, stderr to
stderr), for one input with ``--input``, and ``--follow`` prints a running job's output until it
ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import e2e_support

PRINTING = textwrap.dedent(
    """
    import sys, time
    from fleetmap import remote_parallel_map

    def f(x):
        time.sleep({sleep})
        print(f"out {{x}}")
        print(f"err {{x}}", file=sys.stderr)
        return x

    print(remote_parallel_map(f, range({n}), detach=True), flush=True)
    """
)


def submit(env: dict, n: int, sleep: float) -> str:
    done = e2e_support.run_python(PRINTING.format(n=n, sleep=sleep), env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def logs(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetmap", "logs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_jobs_output_is_shown_by_input_after_it_ended(cluster):
    env = cluster.child_env()
    job_id = submit(env, 12, 0.0)
    # --follow returns once the job has ended, with everything it printed.
    followed = logs(env, job_id, "--follow", "--poll", "0.1")
    assert followed.returncode == 0, followed.stderr
    assert sorted(followed.stdout.splitlines()) == sorted(f"[input {x}] out {x}" for x in range(12))
    assert sorted(followed.stderr.splitlines()) == sorted(f"[input {x}] err {x}" for x in range(12))

    again = logs(env, job_id)
    assert again.returncode == 0, again.stderr
    assert again.stdout == followed.stdout

    one = logs(env, job_id, "--input", "3")
    assert one.returncode == 0, one.stderr
    assert one.stdout == "[input 3] out 3\n"
    assert one.stderr == "[input 3] err 3\n"

    unknown = logs(env, "no-such-job")
    assert unknown.returncode == 1
    assert "no-such-job" in unknown.stderr


def test_follow_prints_a_running_jobs_output_until_it_ends(cluster):
    env = cluster.child_env()
    job_id = submit(env, 20, 0.1)
    followed = logs(env, job_id, "--follow", "--poll", "0.1")
    assert followed.returncode == 0, followed.stderr
    assert sorted(followed.stdout.splitlines()) == sorted(f"[input {x}] out {x}" for x in range(20))

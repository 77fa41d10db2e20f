"""The ``fleetmap`` command line: the local cluster, the fleet's nodes, job records, login.

    fleetmap local up|down|status     start, stop or inspect the local coordinator and node
    fleetmap status                   nodes registered with the configured coordinator, their
                                      slots and the jobs running on them
    fleetmap jobs                     job records, newest first
    fleetmap results JOB_ID           results of a detached job (--wait, --delete)
    fleetmap logs JOB_ID              what a job printed, by input (--input N, --follow)
    fleetmap cancel JOB_ID            cancel a job
    fleetmap login [--api-key KEY]    store the credential remote_parallel_map sends

Every command talks to ``FLEETMAP_COORDINATOR`` or, without it, to the running local cluster.
Errors print one line to stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any, Iterable, List, Optional, Sequence

from . import config, errors, local_cluster, progress, stored, transport
from .frames import NO_INDEX


def _endpoint(args: argparse.Namespace) -> transport.Endpoint:
    return config.resolve(getattr(args, "api_key", None), start_local=False)[0]


def _table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f}G" if isinstance(value, (int, float)) else "-"


def _when(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def cmd_local_up(args: argparse.Namespace) -> int:
    url = local_cluster.ensure_running(cgroups=args.cgroups, pool_size=args.pool_size)
    print(url)
    return 0


def cmd_local_down(args: argparse.Namespace) -> int:
    stopped = local_cluster.down(timeout=args.timeout)
    print("stopped" if stopped else "not running")
    return 0


def cmd_local_status(args: argparse.Namespace) -> int:
    state = local_cluster.status()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"home: {state['home']}  node id: {state['node_id']}")
    rows = []
    for name in ("coordinator", "node"):
        part = state[name]
        rows.append((name, "running" if part["alive"] else "stopped", part["pid"], part["url"], part["log"]))
    print(_table(rows, ("process", "state", "pid", "address", "log")))
    return 0 if state["coordinator"]["alive"] and state["node"]["alive"] else 3


def cmd_status(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    nodes = transport.request_json(endpoint, "GET", "/v1/nodes") or []
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    print(f"coordinator: {endpoint.url}")
    rows = [
        (
            n.get("node_id"),
            _node_state(n),
            n.get("address"),
            n.get("runtime"),
            n.get("python_version"),
            _slots(n),
            f"{n.get('free_cpus')}/{n.get('cpus')}",
            f"{_gib(n.get('free_ram_bytes'))}/{_gib(n.get('ram_bytes'))}",
            _gpus_free(n.get("gpus") or []),
            n.get("instances"),
            len(n.get("environments") or []),
            ",".join(j[:12] for j in n.get("jobs_running") or []) or "-",
        )
        for n in nodes
    ]
    print(_table(rows, ("node", "state", "address", "runtime", "python", "slots used", "cpus free", "ram free", "gpus free", "instances", "envs", "jobs")))
    gpu_rows = [
        (
            n.get("node_id"),
            g.get("index"),
            g.get("name"),
            _gib(g.get("memory_bytes")),
            g.get("uuid"),
            "mig" if g.get("mig") == "enabled" else "",
            f"slot {g.get('slot_id')}" if g.get("in_use") else "free",
        )
        for n in nodes
        for g in (n.get("gpus") or [])
    ]
    if gpu_rows:
        print()
        print(_table(gpu_rows, ("node", "gpu", "model", "memory", "uuid", "mig", "use")))
    return 0


def _gpus_free(gpus: list) -> str:
    """``free/total`` whole GPUs a node can hand out (MIG-enabled ones are never handed out)."""
    if not gpus:
        return "0"
    whole = [g for g in gpus if g.get("mig") != "enabled"]
    free = sum(1 for g in whole if not g.get("in_use"))
    return f"{free}/{len(whole)}"


def _node_state(node: dict) -> str:
    if not node.get("alive", True):
        return "lost"
    return "draining" if node.get("draining") else "alive"


def _slots(node: dict) -> str:
    """One-CPU slots in use out of the node's total."""
    cpus, free = node.get("cpus"), node.get("free_cpus")
    if not isinstance(cpus, int) or not isinstance(free, int):
        return "-"
    return f"{cpus - free}/{cpus}"


def cmd_jobs(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    jobs = transport.request_json(endpoint, "GET", "/v1/jobs") or []
    if args.limit:
        jobs = jobs[: args.limit]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    rows = [
        (
            j.get("job_id"),
            j.get("state"),
            _when(j.get("created_at_ms")),
            f"{j.get('done')}/{j.get('inputs')}",
            j.get("failed"),
            j.get("func_cpu"),
            j.get("func_ram_gb"),
            j.get("message") or "",
        )
        for j in jobs
    ]
    print(_table(rows, ("job", "state", "created", "done", "failed", "cpu", "ram_gb", "message")))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    record = transport.request_json(endpoint, "DELETE", f"/v1/jobs/{args.job_id}")
    state = record.get("state") if isinstance(record, dict) else None
    print(f"job {args.job_id}: {state or 'cancelled'}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    results = stored.fetch_results(args.job_id, args.api_key, wait=args.wait, timeout=args.timeout, delete=args.delete)
    for index, value in enumerate(results):
        print(f"{index}\t{value!r}")
    return 0


TERMINAL_STATES = ("completed", "failed", "cancelled")


def _print_log_entry(entry: dict) -> None:
    text = entry.get("text") or ""
    if not text:
        return
    if entry.get("stream") == "build":
        sys.stderr.write("".join(f"[build] {line}\n" for line in text.rstrip("\n").split("\n")))
        return
    index = entry.get("index")
    out = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
    out.write(progress.attribute(NO_INDEX if index is None else int(index), text))


def cmd_logs(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    seq = 0
    while True:
        query = f"from_seq={seq}" + ("" if args.input is None else f"&input={args.input}")
        page = transport.request_json(endpoint, "GET", f"/v1/jobs/{args.job_id}/logs?{query}")
        for entry in page.get("entries") or []:
            if args.json:
                print(json.dumps(entry))
            else:
                _print_log_entry(entry)
            seq = int(entry["seq"]) + 1
        sys.stdout.flush()
        sys.stderr.flush()
        if page.get("next_seq") is not None:
            seq = int(page["next_seq"])
            continue
        if not args.follow or page.get("state") in TERMINAL_STATES:
            return 0
        time.sleep(args.poll)


def cmd_login(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get(config.ENV_API_KEY)
    if not key:
        key = getpass.getpass("fleetmap API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = (key or "").strip()
    if not key:
        raise errors.InvalidArgument("no API key given; pass --api-key KEY or type it when asked.")
    path = config.api_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".api_key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    print(f"saved to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(prog="fleetmap", description="Run a Python function over many inputs on many machines.")
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="the local coordinator and node on this machine")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="start the local cluster (no-op if it runs) and print its address")
    up.add_argument("--cgroups", choices=local_cluster.CGROUP_MODES, default="auto", help="cgroup enforcement of the node")
    up.add_argument("--pool-size", type=int, default=None, help="idle warm workers the node keeps")
    up.set_defaults(func=cmd_local_up)
    down = local_sub.add_parser("down", help="stop the local cluster")
    down.add_argument("--timeout", type=float, default=local_cluster.STOP_TIMEOUT_S, help="seconds before SIGKILL")
    down.set_defaults(func=cmd_local_down)
    lstatus = local_sub.add_parser("status", help="show the local processes (exit 3 if not running)")
    lstatus.add_argument("--json", action="store_true")
    lstatus.set_defaults(func=cmd_local_status)

    status = sub.add_parser("status", help="nodes registered with the coordinator")
    status.add_argument("--json", action="store_true")
    status.add_argument("--api-key", default=None)
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="job records, newest first")
    jobs.add_argument("--json", action="store_true")
    jobs.add_argument("--limit", type=int, default=50, help="show at most this many (0: all)")
    jobs.add_argument("--api-key", default=None)
    jobs.set_defaults(func=cmd_jobs)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.add_argument("--api-key", default=None)
    cancel.set_defaults(func=cmd_cancel)

    results = sub.add_parser("results", help="results of a detached job, one line per input: INDEX<TAB>repr(value)")
    results.add_argument("job_id")
    results.add_argument("--wait", action="store_true", help="wait for a running job to end")
    results.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    results.add_argument("--delete", action="store_true", help="free the stored results once they were read")
    results.add_argument("--api-key", default=None)
    results.set_defaults(func=cmd_results)

    logs = sub.add_parser("logs", help="what a job printed (stdout, stderr, by input) and its nodes' build log")
    logs.add_argument("job_id")
    logs.add_argument("--input", type=int, default=None, help="only what this input printed")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--poll", type=float, default=0.5, help="with --follow: seconds between asks")
    logs.add_argument("--json", action="store_true", help="one JSON entry per line")
    logs.add_argument("--api-key", default=None)
    logs.set_defaults(func=cmd_logs)

    login = sub.add_parser("login", help="store the API key remote_parallel_map sends")
    login.add_argument("--api-key", default=None)
    login.set_defaults(func=cmd_login)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fleetmap`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except errors.FleetmapError as err:
        print(f"fleetmap: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""The ``environment`` field of a job: a package list, a Dockerfile with its context, or a
clone of this interpreter's installed distributions (the default).

- ``packages=[...]``: exactly those pip requirements on top of the nodes' base environment
  (``packages=[]``: the bare base).
- ``dockerfile=path``: the Dockerfile's text plus every file its ``COPY``/``ADD`` instructions
  take from the build context (the Dockerfile's directory), base64-encoded.
- neither: the clone — every installed distribution as ``name==version``, except those
  installed from a local path or in editable mode (their modules lie outside site-packages and
  travel by value with the function, see ``pickling``), this client itself and ``pip``.  A
  node whose worker interpreter already has every pin at that version runs the job there with
  no build; otherwise it builds the clone once (cached by content hash) and warns about any
  distribution the package index does not have.

``FLEETMAP_CLONE=0`` in the environment sends the node default instead of the clone.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shlex
import sys
from typing import Any, Dict, Iterator, List, Tuple

from .errors import InvalidArgument

MAX_CONTEXT_BYTES = 32 * 1024 * 1024
"""Most bytes of build context sent with a Dockerfile (the SPEC frame carries them)."""

ENV_CLONE = "FLEETMAP_CLONE"

_NOT_CLONED = frozenset(("pip", "fleetmap"))

# One scan of the installed distributions per sys.path state: (stamp, pins to clone, top-level
# module names of the locally installed distributions). Reading every distribution's metadata
# costs tens of milliseconds, far more than a warm call, so no call repeats it.
_scan_cache: Dict[str, Any] = {}


def resolve(dockerfile: Any, packages: Any) -> Dict[str, Any]:
    """The ``environment`` of the job spec for ``dockerfile`` / ``packages`` (validated)."""
    if packages is not None:
        if isinstance(packages, (str, bytes)) or not isinstance(packages, (list, tuple)):
            raise InvalidArgument(
                f"packages must be a list of pip requirements such as ['numpy==1.26.4'] (or [] for the bare "
                f"base environment), got {packages!r}."
            )
        for requirement in packages:
            if not isinstance(requirement, str) or not requirement.strip():
                raise InvalidArgument(f"packages must hold non-empty requirement strings, got {requirement!r}.")
            if requirement.strip().startswith("-"):
                raise InvalidArgument(
                    f"packages holds {requirement!r}, a pip option; list only requirements such as 'six==1.16.0'."
                )
        packages = [p.strip() for p in packages]
    if dockerfile is None:
        if packages is not None:
            return {"kind": "packages", "packages": packages}
        if os.environ.get(ENV_CLONE, "1").strip().lower() in ("0", "false", "no", "off"):
            return {"kind": "node_default"}
        return clone()
    if packages is not None:
        raise InvalidArgument(
            "pass either dockerfile or packages, not both; install the packages with `RUN pip install` in the Dockerfile."
        )
    if not isinstance(dockerfile, (str, os.PathLike)):
        raise InvalidArgument(f"dockerfile must be the path of a Dockerfile, got {dockerfile!r}.")
    path = os.path.abspath(os.fspath(dockerfile))
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise InvalidArgument(f"dockerfile {path!r} cannot be read ({err.strerror}); pass the path of a Dockerfile.") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"dockerfile {path!r} is not UTF-8 text; pass the path of a Dockerfile.") from None
    context = context_files(text, os.path.dirname(path))
    return {"kind": "dockerfile", "content": text, "context": context}


# -- the clone ---------------------------------------------------------------------------


def _normalize(name: str) -> str:
    out, dash = [], False
    for c in name.strip():
        if c in "-_.":
            dash = True
            continue
        if dash and out:
            out.append("-")
        dash = False
        out.append(c.lower())
    return "".join(out)


def _is_local(dist: Any) -> bool:
    """Installed from a local directory / file or in editable mode (PEP 610 direct_url.json)."""
    try:
        raw = dist.read_text("direct_url.json")
    except Exception:
        return False
    if not raw:
        return False
    try:
        info = json.loads(raw)
    except ValueError:
        return False
    if "dir_info" in info:
        return True
    return str(info.get("url", "")).startswith("file:")


def _sys_path_stamp() -> Tuple[Any, ...]:
    stamp: List[Any] = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return tuple(stamp)


def _scan() -> Tuple[List[str], List[str]]:
    """``(pins, local top-level modules)`` of the installed distributions, cached until
    ``sys.path`` (or the mtime of one of its directories) changes."""
    stamp = _sys_path_stamp()
    if _scan_cache.get("stamp") == stamp:
        return _scan_cache["pins"], _scan_cache["local"]
    import importlib.metadata as metadata

    pins: Dict[str, str] = {}
    local: List[str] = []
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        key = _normalize(name)
        if key in _NOT_CLONED:
            continue
        if _is_local(dist):
            local.extend(top for top in _top_level_names(dist) if top != "fleetmap")
            continue
        if key not in pins:
            pins[key] = f"{name}=={dist.version}"
    result = sorted(pins.values(), key=str.lower)
    _scan_cache.update(stamp=stamp, pins=result, local=local)
    return result, local


def installed_distributions() -> List[str]:
    """``name==version`` of every distribution to clone, sorted (cached until sys.path changes)."""
    return list(_scan()[0])


def _top_level_names(dist: Any) -> List[str]:
    text = None
    try:
        text = dist.read_text("top_level.txt")
    except Exception:
        pass
    if text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    names = set()
    for file in dist.files or ():
        parts = str(file).replace("\\", "/").split("/")
        if len(parts) > 1 and not parts[0].endswith((".dist-info", ".egg-info", ".data")) and parts[0] != "..":
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
    return sorted(names)


def clone() -> Dict[str, Any]:
    """The ``clone`` environment of this interpreter, from one scan of ``sys.path``: pins of the
    installed distributions, and the imported modules of those installed from a local path
    (the nodes cannot install them) registered to be pickled by value."""
    import cloudpickle

    pins, local = _scan()
    for top in local:
        module = sys.modules.get(top)
        if module is None:
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except (ValueError, TypeError):
            continue
    return {"kind": "clone", "distributions": list(pins)}


# -- the Dockerfile's context ------------------------------------------------------------


def _instructions(text: str) -> Iterator[Tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        yield word.upper(), rest.strip()
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        yield word.upper(), rest.strip()


def _sources(arguments: str) -> List[str]:
    """The context sources of a COPY/ADD (destination and flags dropped; ``--from`` copies none)."""
    if arguments.startswith("["):
        try:
            words = json.loads(arguments)
        except ValueError:
            words = shlex.split(arguments)
    else:
        words = shlex.split(arguments)
    paths = []
    for word in words:
        if word.startswith("--"):
            if word.startswith("--from"):
                return []
            continue
        paths.append(word)
    return paths[:-1]


def _walk(root: str, start: str) -> Iterator[str]:
    if os.path.isdir(start):
        for folder, dirs, files in os.walk(start):
            dirs.sort()
            for name in sorted(files):
                yield os.path.join(folder, name)
    elif os.path.isfile(start):
        yield start


def context_files(text: str, root: str) -> List[Dict[str, Any]]:
    """The context files the Dockerfile's COPY/ADD instructions use, relative to ``root``."""
    root = os.path.realpath(root)
    chosen: Dict[str, str] = {}
    for instruction, arguments in _instructions(text):
        if instruction not in ("COPY", "ADD"):
            continue
        for source in _sources(arguments):
            if "://" in source or source.startswith("git@"):
                continue  # ADD of a URL: the node fetches it
            pattern = os.path.join(root, source)
            matches = sorted(glob.glob(pattern)) if glob.has_magic(source) else [pattern]
            if not matches or not any(os.path.exists(m) for m in matches):
                raise InvalidArgument(
                    f"the Dockerfile copies {source!r}, which does not exist in its directory {root}; "
                    "create it or fix the COPY/ADD line."
                )
            for match in matches:
                for path in _walk(root, match):
                    real = os.path.realpath(path)
                    if not (real == root or real.startswith(root + os.sep)):
                        raise InvalidArgument(
                            f"the Dockerfile copies {source!r}, which lies outside its directory {root}; "
                            "COPY only files below the Dockerfile's directory."
                        )
                    chosen[os.path.relpath(real, root).replace(os.sep, "/")] = real
    files, total = [], 0
    for rel, real in sorted(chosen.items()):
        with open(real, "rb") as fh:
            data = fh.read()
        total += len(data)
        if total > MAX_CONTEXT_BYTES:
            raise InvalidArgument(
                f"the files the Dockerfile copies exceed {MAX_CONTEXT_BYTES // (1024 * 1024)} MB; "
                "fetch large files in a RUN step instead of COPY."
            )
        files.append(
            {
                "path": rel,
                "data_b64": base64.b64encode(data).decode("ascii"),
                "mode": os.stat(real).st_mode & 0o7777,
            }
        )
    return files

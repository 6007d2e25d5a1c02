"""What replicate records about a training run at ``replicate.init()``.

Every probe here is best-effort: a probe that fails returns ``None`` (or an empty value) and
never raises, because it runs inside the user's training script. Probes are also cheap: the
whole of :func:`collect` typically takes a few tens of milliseconds. External commands (``git``,
``nvidia-smi``) always run with a timeout, and ``torch`` and ``numpy`` are never imported here.

This module imports only the standard library and nothing else from ``replicate``, so it can be
used (and tested) on its own.

Public functions:
    user, host, command, python_version, python_packages, git_info, system_info, collect:
        the probes; each returns plain JSON-able values.
    to_jsonable: converts user params (numpy/torch values, tuples, paths ...) to JSON-able values
        and names the offending key when something cannot be converted.
    format_command, parse_git_status, parse_nvidia_smi_gpus, parse_nvidia_smi_cuda_version:
        the pure formatting and parsing behind the probes, exposed for testing.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "collect",
    "command",
    "format_command",
    "git_info",
    "host",
    "parse_git_status",
    "parse_nvidia_smi_cuda_version",
    "parse_nvidia_smi_gpus",
    "python_packages",
    "python_version",
    "system_info",
    "to_jsonable",
    "user",
]

logger = logging.getLogger(__name__)

#: Timeout, in seconds, for every external command run by a probe.
COMMAND_TIMEOUT = 2.0

#: What :func:`command` returns when running in a Jupyter/IPython kernel.
NOTEBOOK_COMMAND = "[notebook]"

_MIB = 1024 * 1024

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# user, host, python


def user() -> str:
    """Return the name of the user running the process.

    Uses :func:`getpass.getuser` (the ``LOGNAME``, ``USER``, ``LNAME`` and ``USERNAME``
    environment variables, then the password database). In a container running as a uid with no
    password entry, that fails; the numeric uid is returned instead.

    Returns:
        The user name, the numeric uid as a string, or ``""`` if nothing is known.
    """
    try:
        return getpass.getuser()
    except Exception:
        pass
    try:
        return str(os.getuid())  # type: ignore[attr-defined,unused-ignore]
    except Exception:
        return ""


def host() -> str:
    """Return the host name of this machine (``socket.gethostname()``), or ``""``."""
    try:
        return socket.gethostname()
    except Exception:
        pass
    try:
        return platform.node()
    except Exception:
        return ""


def python_version() -> str:
    """Return the version of the running Python, such as ``"3.11.7"`` (or ``"3.13.0rc1"``)."""
    try:
        return platform.python_version()
    except Exception:
        return "{}.{}.{}".format(*sys.version_info[:3])


# --------------------------------------------------------------------------------------------
# command


def command(argv: list[str] | None = None) -> str:
    """Return the script and its arguments as typed, without the Python interpreter.

    The arguments are shell-quoted and joined with spaces, so that the result can be pasted
    back into a shell: ``python train.py --lr 0.1 --name "my run"`` gives
    ``train.py --lr 0.1 --name 'my run'``. Special cases:

    - ``python -m pkg.mod args``: Python replaces ``sys.argv[0]`` with the module's file path;
      the result is ``-m pkg.mod args`` (``-m pkg`` for a package run through its
      ``__main__``). The module name is read from ``__main__.__spec__``.
    - ``python -c CODE args``: the code itself is not available; the result is ``-c args``.
    - A console script (``torchrun``, ``accelerate`` ...) whose absolute path is what ``PATH``
      resolves its bare name to is shown by its bare name, as typed.
    - Interactive Python (the REPL, ``sys.argv == [""]``) and no arguments at all: ``""``.
    - A Jupyter/IPython kernel (including Colab): :data:`NOTEBOOK_COMMAND` (``"[notebook]"``),
      followed by the notebook's file name when the Jupyter server exposes it (through the
      ``JPY_SESSION_NAME`` environment variable): ``"[notebook] train.ipynb"``.

    Args:
        argv: The argument vector; defaults to ``sys.argv``.

    Returns:
        The command line, or ``""`` when there is none or it cannot be determined.
    """
    try:
        if argv is None:
            argv = list(sys.argv)
        argv = [str(a) for a in argv]
        if _is_notebook_argv(argv):
            return _notebook_command()
        return format_command(argv, main_module=_main_module_name(argv))
    except Exception:
        return ""


def format_command(argv: Sequence[str], main_module: str | None = None) -> str:
    """Format an argument vector the way :func:`command` does (pure; no process state).

    Args:
        argv: The argument vector, ``sys.argv``-style.
        main_module: The name of the module run with ``python -m`` (``argv[0]`` is then its
            file path), or ``None``.

    Returns:
        The shell-quoted command line, or ``""`` for an interactive session.
    """
    if not argv or list(argv) == [""]:
        return ""
    first, rest = argv[0], list(argv[1:])
    if main_module:
        if main_module.endswith(".__main__"):
            main_module = main_module[: -len(".__main__")]
        head = ["-m", main_module]
    elif first == "-c":
        head = ["-c"]
    elif first == "-m":  # during interpreter start-up, before the module is found
        head = ["-m"]
    else:
        head = [_as_typed(first)] if first else []
    return " ".join(head[:1] + [shlex.quote(a) for a in head[1:] + rest])


def _as_typed(program: str) -> str:
    """Return ``program`` quoted, shortened to its bare name when ``PATH`` finds it there."""
    if os.path.isabs(program):
        name = os.path.basename(program)
        try:
            found = shutil.which(name)
            if found and os.path.samefile(found, program):
                return shlex.quote(name)
        except OSError:
            pass
    return shlex.quote(program)


def _main_module_name(argv: Sequence[str]) -> str | None:
    """Return the ``python -m`` module name if ``argv[0]`` is the ``__main__`` module's file."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if not name or not argv or not argv[0]:
        return None
    origin = getattr(spec, "origin", None) or getattr(main, "__file__", None)
    try:
        if origin and os.path.abspath(origin) == os.path.abspath(argv[0]):
            return str(name)
    except (TypeError, ValueError):
        pass
    return None


_KERNEL_LAUNCHERS = ("ipykernel_launcher.py", "colab_kernel_launcher.py")


def _is_notebook_argv(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is that of a Jupyter/IPython kernel process."""
    if not argv:
        return False
    first = argv[0].replace("\\", "/")
    return first.endswith(_KERNEL_LAUNCHERS) or first.endswith("ipykernel/__main__.py")


def _notebook_command() -> str:
    session = os.environ.get("JPY_SESSION_NAME", "")
    if session:
        return f"{NOTEBOOK_COMMAND} {os.path.basename(session)}"
    return NOTEBOOK_COMMAND


# --------------------------------------------------------------------------------------------
# python packages

_NORMALIZE = re.compile(r"[-_.]+")


def _canonical(name: str) -> str:
    """PEP 503 normalised form of a distribution name, used to dedupe."""
    return _NORMALIZE.sub("-", name).lower()


def python_packages() -> dict[str, str]:
    """Return every installed distribution and its version, sorted by name.

    Scans the ``*.dist-info`` / ``*.egg-info`` / ``*.egg`` entries of every directory on
    ``sys.path`` and reads only the ``Name`` and ``Version`` headers of each metadata file,
    which is several times faster than :mod:`importlib.metadata` (whose import alone can cost
    30 ms). If the scan finds nothing (a zipapp, a frozen application), falls back to
    :func:`importlib.metadata.distributions`.

    Names are the distributions' own display names (``PyYAML``, ``scikit-learn``). When a
    distribution appears more than once (two ``sys.path`` entries, or names differing only in
    case, ``-``, ``_`` or ``.``), the first one on ``sys.path`` wins, as for imports.

    Returns:
        ``{name: version}`` sorted case-insensitively by name; ``{}`` if nothing can be read.
    """
    found: dict[str, tuple[str, str]] = {}
    try:
        for name, version in _scan_sys_path():
            found.setdefault(_canonical(name), (name, version))
    except Exception:
        logger.debug("scanning sys.path for distributions failed", exc_info=True)
    if not found:
        try:
            for name, version in _importlib_distributions():
                found.setdefault(_canonical(name), (name, version))
        except Exception:
            logger.debug("importlib.metadata.distributions() failed", exc_info=True)
    return dict(sorted(found.values(), key=lambda nv: (nv[0].lower(), nv[0])))


def _importlib_distributions() -> Iterator[tuple[str, str]]:
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version:
            yield str(name), str(version)


def _scan_sys_path() -> Iterator[tuple[str, str]]:
    """Yield ``(name, version)`` for the distributions in the directories on ``sys.path``."""
    seen: set[str] = set()
    for entry in sys.path:
        directory = os.path.abspath(entry or ".")
        if directory in seen:
            continue
        seen.add(directory)
        try:
            with os.scandir(directory) as it:
                children = [(c.name, c.path, c.is_dir()) for c in it if _is_dist_name(c.name)]
        except (OSError, ValueError):
            continue  # not a directory (a zip file), unreadable, or gone
        # .dist-info before .egg-info before .egg, so the modern record wins within a directory.
        children.sort(key=lambda c: (_DIST_SUFFIXES.index(_dist_suffix(c[0])), c[0]))
        for child_name, child_path, is_dir in children:
            result = _read_distribution(child_name, child_path, is_dir)
            if result is not None:
                yield result


_DIST_SUFFIXES = (".dist-info", ".egg-info", ".egg")


def _dist_suffix(name: str) -> str:
    return next(s for s in _DIST_SUFFIXES if name.endswith(s))


def _is_dist_name(name: str) -> bool:
    return name.endswith(_DIST_SUFFIXES)


def _read_distribution(name: str, path: str, is_dir: bool) -> tuple[str, str] | None:
    """Read the name and version of one ``*.dist-info`` / ``*.egg-info`` / ``*.egg`` entry."""
    suffix = _dist_suffix(name)
    if suffix == ".dist-info":
        candidates = [os.path.join(path, "METADATA")]
    elif suffix == ".egg-info":
        candidates = [os.path.join(path, "PKG-INFO")] if is_dir else [path]
    else:
        if not is_dir:
            return None  # a zipped egg: too rare to be worth opening the zip
        candidates = [os.path.join(path, "EGG-INFO", "PKG-INFO")]
    headers: dict[str, str] = {}
    for candidate in candidates:
        headers = _read_headers(candidate)
        if headers:
            break
    dist_name = headers.get("name")
    version = headers.get("version")
    if not dist_name or not version:
        # Fall back to the entry's name: "name-version.dist-info", "name-version-py3.11.egg".
        parts = name[: -len(suffix)].split("-")
        if len(parts) < 2:
            return None
        dist_name, version = dist_name or parts[0], version or parts[1]
    return dist_name, version


def _read_headers(path: str) -> dict[str, str]:
    """Read the ``Name`` and ``Version`` headers of a core-metadata file (stops early)."""
    headers: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    break  # end of the headers; the body (description) follows
                key, sep, value = line.partition(":")
                key = key.lower()
                if sep and key in ("name", "version") and key not in headers:
                    headers[key] = value.strip()
                    if len(headers) == 2:
                        break
    except OSError:
        return {}
    return headers


# --------------------------------------------------------------------------------------------
# git


def git_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """Return the git state of the work tree containing ``path``.

    Runs a single ``git status --porcelain=v2 --branch --untracked-files=no`` (without taking
    optional locks, so it never contends with the user's own git commands). ``dirty`` follows
    git's own notion (as in ``git describe --dirty``): a tracked file modified, staged, deleted
    or renamed; untracked files do not count. If ``git status`` exceeds its timeout (a huge
    repository), the commit and branch are read with cheaper commands and ``dirty`` is ``None``.

    Args:
        path: A file or directory; defaults to the current working directory.

    Returns:
        ``{"commit": sha, "branch": name, "dirty": bool}``: ``commit`` is the full hex sha of
        HEAD (``None`` before the first commit), ``branch`` is ``None`` on a detached HEAD.
        ``None`` when ``path`` is not inside a git work tree, git is not installed, or git fails.
    """
    try:
        directory = os.fspath(path) if path is not None else os.getcwd()
        if not os.path.isdir(directory):
            directory = os.path.dirname(directory) or "."
        if not os.path.isdir(directory):
            return None
        try:
            out = _git(directory, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
        except subprocess.TimeoutExpired:
            return _git_info_without_status(directory)
        return parse_git_status(out) if out is not None else None
    except Exception:
        logger.debug("git probe failed", exc_info=True)
        return None


def _git(directory: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str | None:
    """Run git in ``directory``; return its stdout, or ``None`` if it is missing or fails."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except OSError:  # git not installed, directory vanished
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def _git_info_without_status(directory: str) -> dict[str, Any] | None:
    commit = _git(directory, "rev-parse", "--verify", "-q", "HEAD", timeout=1)
    if commit is None:
        return None
    branch = _git(directory, "symbolic-ref", "-q", "--short", "HEAD", timeout=1)
    return {
        "commit": commit.strip() or None,
        "branch": (branch or "").strip() or None,
        "dirty": None,
    }


def parse_git_status(output: str) -> dict[str, Any]:
    """Parse the output of ``git status --porcelain=v2 --branch``.

    Args:
        output: The command's stdout.

    Returns:
        ``{"commit": sha or None, "branch": name or None, "dirty": bool}``. ``commit`` is
        ``None`` before the first commit (``# branch.oid (initial)``); ``branch`` is ``None``
        on a detached HEAD (``# branch.head (detached)``); ``dirty`` is whether any
        non-header line (a changed entry) is present.
    """
    commit: str | None = None
    branch: str | None = None
    dirty = False
    for line in output.splitlines():
        if line.startswith("# branch.oid "):
            value = line[len("# branch.oid ") :].strip()
            commit = None if value == "(initial)" else value
        elif line.startswith("# branch.head "):
            value = line[len("# branch.head ") :].strip()
            branch = None if value == "(detached)" else value
        elif line.startswith("#"):
            continue
        elif line.strip():
            dirty = True
    return {"commit": commit, "branch": branch, "dirty": dirty}


# --------------------------------------------------------------------------------------------
# system


def system_info() -> dict[str, Any]:
    """Return a description of the machine: OS, CPU, memory, GPUs and CUDA.

    GPUs come from ``torch.cuda`` when torch is already imported *and* has already initialised
    CUDA (this module never imports torch, and never initialises CUDA itself: that would create
    a CUDA context, take GPU memory, and break fork-based workers or a later device choice);
    otherwise from ``nvidia-smi`` when it is on ``PATH`` (timeout 2 s).

    ``cuda`` is the CUDA version the run uses: ``torch.version.cuda`` when torch is imported,
    else the installed toolkit (``$CUDA_HOME``, ``$CUDA_PATH`` or ``/usr/local/cuda``:
    ``version.json``, ``version.txt`` or a ``cuda-X.Y`` directory name; or ``$CUDA_VERSION``
    as set by NVIDIA's container images), else the CUDA version the driver supports (the
    ``nvidia-smi`` header). ``None`` when none of these exist.

    Returns:
        ``{"os": platform.platform(), "os_name": str or None, "kernel": str, "machine": str,
        "cpu": str or None, "cpu_count": int or None, "memory_bytes": int or None,
        "gpus": [{"name": str, "memory_bytes": int or None, "driver": str or None}, ...],
        "cuda": str or None}``.
    """
    info: dict[str, Any] = {
        "os": _safe(platform.platform, ""),
        "os_name": _safe(_os_name, None),
        "kernel": _safe(platform.release, ""),
        "machine": _safe(platform.machine, ""),
        "cpu": _safe(_cpu_model, None),
        "cpu_count": _safe(os.cpu_count, None),
        "memory_bytes": _safe(_memory_bytes, None),
    }
    cuda: str | None = _safe(_cuda_version, None)
    no_gpus: tuple[list[dict[str, Any]], str | None] = ([], None)
    gpus, smi_cuda = _safe(lambda: _gpus(want_cuda=cuda is None), no_gpus)
    info["gpus"] = gpus
    info["cuda"] = cuda or smi_cuda
    return info


def _safe(fn: Callable[[], _T], default: _T) -> _T:
    """Call ``fn``; return ``default`` (and log at DEBUG level) if it raises."""
    try:
        return fn()
    except Exception:
        logger.debug("system probe %s failed", getattr(fn, "__name__", fn), exc_info=True)
        return default


def _os_name() -> str | None:
    """Return a human name for the OS: ``Ubuntu 22.04.3 LTS``, ``macOS 14.1``, ``Windows 11``."""
    system = platform.system()
    if system == "Linux":
        try:
            release = platform.freedesktop_os_release()
        except OSError:
            return "Linux"
        return release.get("PRETTY_NAME") or release.get("NAME") or "Linux"
    if system == "Darwin":
        version = platform.mac_ver()[0]
        return f"macOS {version}" if version else "macOS"
    if system == "Windows":
        return f"Windows {platform.release()}".strip()
    return system or None


def _cpu_model() -> str | None:
    """Return the CPU model name, e.g. ``AMD EPYC 7R13 Processor``."""
    system = platform.system()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:  # stop at the first match: /proc/cpuinfo can be long
                    key, sep, value = line.partition(":")
                    name = value.strip()
                    if sep and name and key.strip() in ("model name", "Hardware", "cpu model"):
                        return name
        except OSError:
            pass
    elif system == "Darwin":
        try:
            proc = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            name = proc.stdout.decode("utf-8", "replace").strip()
            if proc.returncode == 0 and name:
                return name
        except (OSError, subprocess.TimeoutExpired):
            pass
    elif system == "Windows":
        try:
            import winreg  # type: ignore[import-not-found,unused-ignore]

            key = winreg.OpenKey(  # type: ignore[attr-defined,unused-ignore]
                winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined,unused-ignore]
                r"HARDWARE\DESCRIPTION\System\CentralProcessor\0",
            )
            value = winreg.QueryValueEx(key, "ProcessorNameString")[0]  # type: ignore[attr-defined,unused-ignore]
            if value:
                return str(value).strip()
        except Exception:
            pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    """Total physical memory in bytes."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and page_size > 0:
            return int(pages) * int(page_size)
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "win32":
        import ctypes

        class _MemoryStatus(ctypes.Structure):
            _fields_ = [
                ("dwLength", ctypes.c_ulong),
                ("dwMemoryLoad", ctypes.c_ulong),
                ("ullTotalPhys", ctypes.c_ulonglong),
                ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong),
                ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong),
                ("ullAvailVirtual", ctypes.c_ulonglong),
                ("sullAvailExtendedVirtual", ctypes.c_ulonglong),
            ]

        status = _MemoryStatus()
        status.dwLength = ctypes.sizeof(_MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined,unused-ignore]
            return int(status.ullTotalPhys)
    return None


def _gpus(want_cuda: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Return the GPUs, and the driver's CUDA version if ``want_cuda`` and ``nvidia-smi`` ran.

    Args:
        want_cuda: Whether to run plain ``nvidia-smi`` a second time for its ``CUDA Version``
            header (only when GPUs were found; the caller knows no better source).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        gpus = _torch_gpus(torch)
        if gpus is not None:
            return gpus, None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], None
    query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
    out = _run(query)
    gpus = parse_nvidia_smi_gpus(out) if out is not None else []
    cuda = None
    if gpus and want_cuda:
        header = _run([smi])
        cuda = parse_nvidia_smi_cuda_version(header) if header is not None else None
    return gpus, cuda


def _torch_gpus(torch: Any) -> list[dict[str, Any]] | None:
    """GPUs from an already-imported torch whose CUDA is already initialised, else ``None``."""
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None
    gpus = []
    for index in range(cuda.device_count()):
        props = cuda.get_device_properties(index)
        gpus.append(
            {
                "name": str(props.name),
                "memory_bytes": int(props.total_memory),
                "driver": None,
            }
        )
    return gpus


def _run(args: list[str]) -> str | None:
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace")


def parse_nvidia_smi_gpus(output: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader``.

    Accepts output with or without ``nounits`` (``81920`` or ``81920 MiB``); unavailable values
    (``[N/A]``, ``[Not Supported]``) become ``None``. Lines that do not have three fields are
    skipped.

    Args:
        output: The command's stdout.

    Returns:
        ``[{"name": str, "memory_bytes": int or None, "driver": str or None}, ...]``.
    """
    gpus = []
    for line in output.splitlines():
        fields = line.strip().rsplit(",", 2)  # the name comes first and may contain commas
        if len(fields) != 3:
            continue
        name, memory, driver = (f.strip() for f in fields)
        if not name:
            continue
        gpus.append(
            {
                "name": name,
                "memory_bytes": _parse_mib(memory),
                "driver": None if _unavailable(driver) else driver,
            }
        )
    return gpus


def _unavailable(value: str) -> bool:
    return not value or (value.startswith("[") and value.endswith("]")) or value == "N/A"


def _parse_mib(value: str) -> int | None:
    if _unavailable(value):
        return None
    number = value.split(maxsplit=1)[0]
    try:
        return int(float(number) * _MIB)
    except ValueError:
        return None


_SMI_CUDA = re.compile(r"CUDA Version\s*:\s*([0-9][0-9.]*)")


def parse_nvidia_smi_cuda_version(output: str) -> str | None:
    """Parse the ``CUDA Version: 12.2`` field of plain ``nvidia-smi`` (or ``nvidia-smi -q``).

    Args:
        output: The command's stdout.

    Returns:
        The version string, or ``None`` if absent.
    """
    match = _SMI_CUDA.search(output)
    return match.group(1) if match else None


def _cuda_version() -> str | None:
    torch = sys.modules.get("torch")
    version = getattr(getattr(torch, "version", None), "cuda", None)
    if version:
        return str(version)
    return _toolkit_cuda_version()


_CUDA_DIR_VERSION = re.compile(r"cuda-([0-9]+(?:\.[0-9]+)*)$")


def _toolkit_cuda_version() -> str | None:
    """Return the installed CUDA toolkit's version, read from files (no command is run)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        try:
            with open(os.path.join(root, "version.json"), encoding="utf-8") as f:
                version = json.load(f)["cuda"]["version"]
                if version:
                    return str(version)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            with open(os.path.join(root, "version.txt"), encoding="utf-8") as f:
                match = re.search(r"([0-9]+\.[0-9][0-9.]*)", f.read(200))
                if match:
                    return match.group(1)
        except OSError:
            pass
        match = _CUDA_DIR_VERSION.search(os.path.realpath(root).rstrip("/\\"))
        if match:
            return match.group(1)
    return os.environ.get("CUDA_VERSION") or None


# --------------------------------------------------------------------------------------------
# collect


def collect(
    path: str | os.PathLike[str] | None = None, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """Collect everything replicate records about a run at ``init()``.

    Never raises; a probe that fails contributes its empty value.

    Args:
        path: Where to look for a git work tree; defaults to the current working directory.
        timings: If given, filled with the seconds each part took (``{"git": 0.004, ...}``);
            the same figures are logged at DEBUG level.

    Returns:
        ``{"user": str, "host": str, "command": str, "python_version": str,
        "python_packages": {name: version}, "git": dict or None, "system": dict}`` (see the
        individual functions for the shapes).
    """
    probes: list[tuple[str, Any, Any]] = [
        ("user", user, ""),
        ("host", host, ""),
        ("command", command, ""),
        ("python_version", python_version, ""),
        ("python_packages", python_packages, {}),
        ("git", lambda: git_info(path), None),
        ("system", system_info, {}),
    ]
    result: dict[str, Any] = {}
    spent: dict[str, float] = {}
    for key, probe, default in probes:
        start = time.perf_counter()
        try:
            result[key] = probe()
        except Exception:  # the probes do not raise; this is a last line of defence
            logger.debug("metadata probe %s failed", key, exc_info=True)
            result[key] = default
        spent[key] = time.perf_counter() - start
    if timings is not None:
        timings.update(spent)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "metadata collected in %.1f ms (%s)",
            1000 * sum(spent.values()),
            ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in spent.items()),
        )
    return result


# --------------------------------------------------------------------------------------------
# params


def to_jsonable(value: Any, name: str = "", *, kind: str = "param") -> Any:
    """Convert a user value (a param, say) into plain JSON-able Python values.

    Conversions:

    - ``None``, ``bool``, ``int``, ``float`` and ``str`` are kept (subclasses, such as
      ``IntEnum`` members, become the base type). NaN and ±Infinity floats are kept as floats.
    - numpy scalars (``np.float32(0.1)``, ``np.int64``, ``np.bool_``) become Python scalars
      (``.item()``); numpy arrays, torch tensors (anything with ``.detach()`` and
      ``.tolist()``) and other array-likes (``__array__`` and ``.tolist()``) become (nested)
      lists. Neither numpy nor torch is imported: they are recognised by duck typing.
    - Mappings become dicts; lists, tuples and other sequences become lists; sets and
      frozensets become sorted lists; ``os.PathLike`` objects (``pathlib.Path``) become strings.
    - Dict keys must be strings. ``int``, ``float`` and ``bool`` keys (numpy ones too) are
      converted to strings the way :func:`json.dumps` does (``1`` → ``"1"``, ``True`` →
      ``"true"``); a key that collides with another once converted, or a key of another type,
      is a ``ValueError``.

    Anything else (bytes, complex, datetime, arbitrary objects, self-containing containers)
    raises ``ValueError`` naming the offending key path, e.g. ``param 'optimizer.betas[1]':
    value of type datetime.datetime is not JSON-serializable; ...``.

    Args:
        value: The value to convert.
        name: The key path of ``value`` itself, used in error messages (``""`` when ``value``
            is the whole params dict).
        kind: The word used in error messages (``"param"``, ``"metric"``).

    Returns:
        An equivalent value made only of dicts, lists, str, int, float, bool and None.

    Raises:
        ValueError: A value or key cannot be converted.
    """
    return _to_jsonable(value, name, kind, set())


_SCALARS = (str, int, float, bool, type(None))


def _to_jsonable(value: Any, path: str, kind: str, active: set[int]) -> Any:
    cls = type(value)
    if cls in _SCALARS:
        return value
    module = getattr(cls, "__module__", "") or ""
    if module == "numpy" or module.startswith("numpy."):
        if _is_numpy_scalar(value):  # np.generic or a 0-d array
            return _to_jsonable(value.item(), path, kind, active)
        if callable(getattr(value, "tolist", None)):  # np.ndarray, np.ma.MaskedArray ...
            return _container(value, path, kind, active, value.tolist)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if callable(getattr(value, "detach", None)) and callable(getattr(value, "tolist", None)):
        return _container(value, path, kind, active, lambda: value.detach().tolist())
    if isinstance(value, Mapping):
        return _container(value, path, kind, active, None)
    if isinstance(value, (set, frozenset)):
        return _container(value, path, kind, active, None)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray, memoryview)):
        return _container(value, path, kind, active, None)
    if isinstance(value, os.PathLike):
        fspath = os.fspath(value)
        if isinstance(fspath, str):
            return fspath
    if hasattr(value, "__array__") and callable(getattr(value, "tolist", None)):
        # Other array-likes: pandas Series, JAX and CuPy arrays ...
        return _container(value, path, kind, active, value.tolist)
    raise ValueError(
        f"{kind} {path!r}: value of type {_type_name(value)} is not JSON-serializable; "
        "pass a number, string, bool, None, list or dict"
    )


def _is_numpy_scalar(value: Any) -> bool:
    """Whether ``value`` is a numpy scalar (``np.generic``) or 0-d array, by duck typing."""
    return callable(getattr(value, "item", None)) and getattr(value, "shape", None) == ()


def _container(value: Any, path: str, kind: str, active: set[int], convert: Any) -> Any:
    """Convert a container, guarding against a container that contains itself."""
    key = id(value)
    if key in active:
        raise ValueError(f"{kind} {path!r}: value contains itself; it is not JSON-serializable")
    active.add(key)
    try:
        if convert is not None:
            converted = convert()
            # .tolist() of a 0-d array is a scalar; otherwise nested lists.
            return _to_jsonable(converted, path, kind, active)
        if isinstance(value, Mapping):
            return _mapping(value, path, kind, active)
        items = [_to_jsonable(v, f"{path}[{i}]", kind, active) for i, v in enumerate(value)]
        if isinstance(value, (set, frozenset)):
            try:
                items.sort()
            except TypeError:  # mixed types: any fixed order will do
                items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    finally:
        active.discard(key)


def _mapping(value: Mapping[Any, Any], path: str, kind: str, active: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, item in value.items():
        key = _key(raw_key, path, kind)
        child = f"{path}.{key}" if path else key
        if key in out:
            raise ValueError(
                f"{kind} {child!r}: two keys both become {key!r} once converted to strings"
            )
        out[key] = _to_jsonable(item, child, kind, active)
    return out


def _key(key: Any, path: str, kind: str) -> str:
    """Convert a dict key to a string the way ``json.dumps`` does (str, int, float, bool)."""
    cls = type(key)
    if cls is str:
        return str(key)
    module = getattr(cls, "__module__", "") or ""
    if (module == "numpy" or module.startswith("numpy.")) and _is_numpy_scalar(key):
        key = key.item()
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        key = float(key)
        if math.isnan(key):
            return "NaN"
        if math.isinf(key):
            return "Infinity" if key > 0 else "-Infinity"
        return repr(key)
    raise ValueError(
        f"{kind} {path!r}: key {key!r} of type {_type_name(key)} is not a string; "
        "dict keys must be strings (or numbers)"
    )


def _type_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "")
    qualname = getattr(cls, "__qualname__", cls.__name__)
    return qualname if module in ("builtins", "", None) else f"{module}.{qualname}"

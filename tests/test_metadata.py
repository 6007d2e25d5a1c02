"""Tests for replicate.metadata: the run metadata recorded at init()."""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from types import ModuleType
from typing import Any

import pytest


def _load_metadata() -> ModuleType:
    """Import replicate.metadata, or load the file alone if the package does not import yet."""
    try:
        from replicate import metadata

        return metadata
    except Exception:  # the rest of the package is written concurrently
        path = pathlib.Path(__file__).resolve().parents[1] / "replicate" / "metadata.py"
        spec = importlib.util.spec_from_file_location("replicate_metadata_standalone", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


md = _load_metadata()
METADATA_FILE = pathlib.Path(md.__file__).resolve()

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


# --------------------------------------------------------------------------------------------
# git


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Isolate git from the user's and the system's configuration."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.com")
    # Never find a repository above the temporary directory.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def git(repo: pathlib.Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return proc.stdout.strip()


@pytest.fixture
def repo(git_env: None, tmp_path: pathlib.Path) -> pathlib.Path:
    """A real git repository on branch ``main`` with one commit of ``train.py``."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hello')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    return path


@needs_git
def test_git_info_clean_repo(repo: pathlib.Path) -> None:
    info = md.git_info(repo)
    assert info == {"commit": git(repo, "rev-parse", "HEAD"), "branch": "main", "dirty": False}
    assert len(info["commit"]) == 40
    json.dumps(info)


@needs_git
def test_git_info_accepts_str_subdirectory_and_file(repo: pathlib.Path) -> None:
    (repo / "sub").mkdir()
    head = git(repo, "rev-parse", "HEAD")
    assert md.git_info(str(repo / "sub"))["commit"] == head
    assert md.git_info(repo / "train.py")["commit"] == head


@needs_git
def test_git_info_defaults_to_cwd(repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    assert md.git_info()["commit"] == git(repo, "rev-parse", "HEAD")
    assert md.git_info(None)["branch"] == "main"


@needs_git
def test_git_info_modified_file_is_dirty(repo: pathlib.Path) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    assert md.git_info(repo)["dirty"] is True
    git(repo, "checkout", "--", "train.py")
    assert md.git_info(repo)["dirty"] is False


@needs_git
def test_git_info_staged_and_deleted_files_are_dirty(repo: pathlib.Path) -> None:
    (repo / "new.py").write_text("x = 1\n")
    git(repo, "add", "new.py")
    assert md.git_info(repo)["dirty"] is True
    git(repo, "reset", "-q", "new.py")
    (repo / "new.py").unlink()
    (repo / "train.py").unlink()
    assert md.git_info(repo)["dirty"] is True


@needs_git
def test_git_info_untracked_files_do_not_make_it_dirty(repo: pathlib.Path) -> None:
    (repo / "notes.txt").write_text("scratch\n")
    (repo / "data").mkdir()
    (repo / "data" / "x.csv").write_text("1,2\n")
    assert md.git_info(repo)["dirty"] is False


@needs_git
def test_git_info_detached_head(repo: pathlib.Path) -> None:
    (repo / "train.py").write_text("print('second')\n")
    git(repo, "commit", "-q", "-am", "second")
    first = git(repo, "rev-parse", "HEAD~1")
    git(repo, "checkout", "-q", "--detach", first)
    assert md.git_info(repo) == {"commit": first, "branch": None, "dirty": False}


@needs_git
def test_git_info_other_branch(repo: pathlib.Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature/lr-sweep")
    assert md.git_info(repo)["branch"] == "feature/lr-sweep"


@needs_git
def test_git_info_repo_without_commits(git_env: None, tmp_path: pathlib.Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    assert md.git_info(tmp_path) == {"commit": None, "branch": "main", "dirty": False}


@needs_git
def test_git_info_not_a_repo(git_env: None, tmp_path: pathlib.Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert md.git_info(plain) is None
    assert md.git_info(tmp_path / "does-not-exist") is None


def test_git_info_without_git_installed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no git on PATH: a real "not installed"
    assert md.git_info(tmp_path) is None


def test_parse_git_status() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    clean = f"# branch.oid {sha}\n# branch.head main\n# branch.upstream origin/main\n"
    clean += "# branch.ab +0 -0\n"
    assert md.parse_git_status(clean) == {"commit": sha, "branch": "main", "dirty": False}
    dirty = (
        f"# branch.oid {sha}\n# branch.head (detached)\n"
        "1 .M N... 100644 100644 100644 abc abc train.py\n"
    )
    assert md.parse_git_status(dirty) == {"commit": sha, "branch": None, "dirty": True}
    initial = "# branch.oid (initial)\n# branch.head master\n"
    assert md.parse_git_status(initial) == {"commit": None, "branch": "master", "dirty": False}


# --------------------------------------------------------------------------------------------
# python packages


def test_python_packages_contains_pytest_with_its_version() -> None:
    packages = md.python_packages()
    assert packages["pytest"] == importlib.metadata.version("pytest")
    assert packages["numpy"] == importlib.metadata.version("numpy")
    assert list(packages) == sorted(packages, key=lambda n: (n.lower(), n))
    assert all(isinstance(v, str) and v for v in packages.values())


def test_python_packages_matches_importlib_metadata() -> None:
    expected: dict[str, str] = {}
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        key = md._canonical(name)
        if key not in seen:
            seen.add(key)
            expected[name] = dist.version
    assert md.python_packages() == expected


def _dist_info(directory: pathlib.Path, dirname: str, metadata: str | None) -> None:
    path = directory / dirname
    path.mkdir(parents=True)
    if metadata is not None:
        (path / "METADATA").write_text(metadata)


def test_python_packages_reads_headers_and_dedupes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist_info(
        first,
        "Fancy_Pkg-1.0.dist-info",
        "Metadata-Version: 2.1\nName: Fancy.Pkg\nVersion: 1.0\n\nName: not-a-header\n",
    )
    # The same distribution (PEP 503 normalised) further down sys.path: the first one wins.
    _dist_info(second, "fancy_pkg-2.0.dist-info", "Name: fancy-pkg\nVersion: 2.0\n")
    # No METADATA file: the directory name supplies name and version.
    _dist_info(second, "nometa_pkg-3.1.dist-info", None)
    # A distutils-style .egg-info file is itself the PKG-INFO.
    (second / "Old-Egg-0.5-py3.11.egg-info").write_text("Name: Old-Egg\nVersion: 0.5\n")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    packages = md.python_packages()
    assert packages["Fancy.Pkg"] == "1.0"
    assert "fancy-pkg" not in packages
    assert packages["nometa_pkg"] == "3.1"
    assert packages["Old-Egg"] == "0.5"
    assert packages["pytest"] == importlib.metadata.version("pytest")


# --------------------------------------------------------------------------------------------
# command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train.py", "--lr", "0.1"], "train.py --lr 0.1"),
        (["train.py", "--name", "my run", "--x=$HOME"], "train.py --name 'my run' '--x=$HOME'"),
        (["scripts/train.py"], "scripts/train.py"),
        ([""], ""),
        ([], ""),
        (["-c", "a", "b c"], "-c a 'b c'"),
        (["-"], "-"),
    ],
)
def test_command_from_argv(argv: list[str], expected: str) -> None:
    assert md.command(argv) == expected


def test_format_command_python_dash_m() -> None:
    argv = ["/site-packages/pkg/mod.py", "--epochs", "3"]
    assert md.format_command(argv, main_module="pkg.mod") == "-m pkg.mod --epochs 3"
    argv = ["/site-packages/pkg/__main__.py", "x"]
    assert md.format_command(argv, main_module="pkg.__main__") == "-m pkg x"


def test_command_shows_console_scripts_by_bare_name() -> None:
    found = shutil.which("git") or shutil.which("sh")
    if found is None:
        pytest.skip("neither git nor sh on PATH")
    name = os.path.basename(found)
    assert md.command([found, "status", "-s"]) == f"{name} status -s"
    # A path that PATH does not resolve the bare name to is kept as typed.
    assert md.command(["/nonexistent/dir/train.py", "a"]) == "/nonexistent/dir/train.py a"


def test_command_in_notebook_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [
        "/venv/lib/python3.11/site-packages/ipykernel_launcher.py",
        "-f",
        "/root/.local/share/jupyter/runtime/kernel-1234.json",
    ]
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert md.command(argv) == md.NOTEBOOK_COMMAND == "[notebook]"
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/work/train.ipynb")
    assert md.command(argv) == "[notebook] train.ipynb"
    assert md.command(["/usr/local/lib/python3.10/dist-packages/colab_kernel_launcher.py"]) == (
        "[notebook] train.ipynb"
    )


def _run_python(args: list[str], cwd: pathlib.Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


LOADER = textwrap.dedent(
    f"""
    import importlib.util
    spec = importlib.util.spec_from_file_location("meta", {str(METADATA_FILE)!r})
    meta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meta)
    print(meta.command())
    """
)


def test_command_of_a_real_script(tmp_path: pathlib.Path) -> None:
    (tmp_path / "train.py").write_text(LOADER)
    assert _run_python(["train.py", "--lr", "0.1", "--tag", "a b"], tmp_path) == (
        "train.py --lr 0.1 --tag 'a b'"
    )


def test_command_of_python_dash_m_and_dash_c(tmp_path: pathlib.Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(LOADER)
    (pkg / "__main__.py").write_text(LOADER)
    assert _run_python(["-m", "mypkg.train", "--lr", "1"], tmp_path) == "-m mypkg.train --lr 1"
    assert _run_python(["-m", "mypkg", "go"], tmp_path) == "-m mypkg go"
    assert _run_python(["-c", LOADER, "x", "y"], tmp_path) == "-c x y"


def test_command_never_raises() -> None:
    assert md.command(None) == md.command(list(sys.argv))
    assert isinstance(md.command(), str)


# --------------------------------------------------------------------------------------------
# user, host, python version


def test_user_host_python_version() -> None:
    assert isinstance(md.user(), str) and md.user()
    assert isinstance(md.host(), str)
    assert md.python_version() == "{}.{}.{}".format(*sys.version_info[:3]) or (
        md.python_version().startswith("{}.{}.{}".format(*sys.version_info[:3]))
    )


# --------------------------------------------------------------------------------------------
# system


def test_system_info() -> None:
    info = md.system_info()
    expected = {
        "os",
        "os_name",
        "kernel",
        "machine",
        "cpu",
        "cpu_count",
        "memory_bytes",
        "gpus",
        "cuda",
    }
    assert set(info) == expected
    assert info["cpu_count"] > 0
    assert info["memory_bytes"] is None or info["memory_bytes"] > 2**20
    assert isinstance(info["gpus"], list)
    assert info["os"]
    json.dumps(info)
    if sys.platform.startswith("linux"):
        assert info["memory_bytes"] > 0


def test_system_info_does_not_import_torch() -> None:
    had_torch = "torch" in sys.modules
    md.system_info()
    assert ("torch" in sys.modules) == had_torch


NVIDIA_SMI_CSV = """\
NVIDIA A100-SXM4-80GB, 81920, 535.104.05
NVIDIA A100-SXM4-80GB, 81920, 535.104.05

Tesla T4, 15360 MiB, 470.182.03
NVIDIA H100 80GB HBM3, [N/A], [Not Supported]
garbage line
"""


def test_parse_nvidia_smi_gpus() -> None:
    gpus = md.parse_nvidia_smi_gpus(NVIDIA_SMI_CSV)
    assert gpus == [
        {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 81920 * 2**20, "driver": "535.104.05"},
        {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 81920 * 2**20, "driver": "535.104.05"},
        {"name": "Tesla T4", "memory_bytes": 15360 * 2**20, "driver": "470.182.03"},
        {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": None, "driver": None},
    ]
    assert md.parse_nvidia_smi_gpus("") == []
    # A comma in the name (the first field) does not shift the other fields.
    assert md.parse_nvidia_smi_gpus("Odd, Name, 1024, 1.0\n")[0]["name"] == "Odd, Name"


NVIDIA_SMI_HEADER = """\
Tue Oct  3 10:12:01 2023
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""


def test_parse_nvidia_smi_cuda_version() -> None:
    assert md.parse_nvidia_smi_cuda_version(NVIDIA_SMI_HEADER) == "12.2"
    assert md.parse_nvidia_smi_cuda_version("    CUDA Version                   : 12.4\n") == "12.4"
    assert md.parse_nvidia_smi_cuda_version("No devices were found") is None


def test_toolkit_cuda_version_from_files(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with_json = tmp_path / "a"
    with_json.mkdir()
    (with_json / "version.json").write_text(
        json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.2.20230823"}})
    )
    monkeypatch.setenv("CUDA_HOME", str(with_json))
    assert md._toolkit_cuda_version() == "12.2.20230823"

    with_txt = tmp_path / "b"
    with_txt.mkdir()
    (with_txt / "version.txt").write_text("CUDA Version 10.2.89\n")
    monkeypatch.setenv("CUDA_HOME", str(with_txt))
    assert md._toolkit_cuda_version() == "10.2.89"

    named = tmp_path / "cuda-11.8"
    named.mkdir()
    link = tmp_path / "cuda"
    link.symlink_to(named)
    monkeypatch.setenv("CUDA_HOME", str(link))
    assert md._toolkit_cuda_version() == "11.8"


# --------------------------------------------------------------------------------------------
# collect


def test_collect() -> None:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    result = md.collect(None, timings=timings)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # a sanity bound; typically ~10 ms
    assert set(result) == {
        "user",
        "host",
        "command",
        "python_version",
        "python_packages",
        "git",
        "system",
    }
    assert set(timings) == set(result)
    assert result["python_packages"]["pytest"] == importlib.metadata.version("pytest")
    json.dumps(result)


@needs_git
def test_collect_uses_path_for_git(repo: pathlib.Path) -> None:
    assert md.collect(repo)["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert md.collect(str(repo))["git"]["branch"] == "main"


# --------------------------------------------------------------------------------------------
# to_jsonable


def test_to_jsonable_plain_values_unchanged() -> None:
    params = {"lr": 0.01, "epochs": 10, "name": "run", "flag": True, "none": None}
    assert md.to_jsonable(params) == params
    assert md.to_jsonable([1, [2, {"a": "b"}]]) == [1, [2, {"a": "b"}]]


def test_to_jsonable_numpy() -> None:
    np = pytest.importorskip("numpy")
    out = md.to_jsonable(
        {
            "f32": np.float32(0.5),
            "f64": np.float64(0.1),
            "i64": np.int64(7),
            "u8": np.uint8(255),
            "b": np.bool_(True),
            "s": np.str_("adam"),
            "arr": np.arange(6).reshape(2, 3),
            "farr": np.array([0.5, 1.5], dtype=np.float32),
            "zero_d": np.array(3.0),
        }
    )
    assert out == {
        "f32": 0.5,
        "f64": 0.1,
        "i64": 7,
        "u8": 255,
        "b": True,
        "s": "adam",
        "arr": [[0, 1, 2], [3, 4, 5]],
        "farr": [0.5, 1.5],
        "zero_d": 3.0,
    }
    assert type(out["f64"]) is float and type(out["i64"]) is int and type(out["b"]) is bool
    assert type(out["s"]) is str and type(out["arr"][0][0]) is int
    assert md.to_jsonable(np.float64(2.5)) == 2.5
    assert md.to_jsonable({np.int64(3): "x"}) == {"3": "x"}
    json.dumps(out)


def test_to_jsonable_nan_and_infinity_kept_as_floats() -> None:
    out = md.to_jsonable({"a": float("nan"), "b": [float("inf"), -math.inf]})
    assert math.isnan(out["a"])
    assert out["b"] == [math.inf, -math.inf]
    np = pytest.importorskip("numpy")
    assert math.isnan(md.to_jsonable(np.float32("nan")))
    assert math.isnan(md.to_jsonable(np.array([np.nan]))[0])


def test_to_jsonable_nested_containers() -> None:
    out = md.to_jsonable(
        {
            "opt": OrderedDict(name="adam", betas=(0.9, 0.999)),
            "layers": [(1, 2), {3, 1, 2}, frozenset({"b", "a"})],
            "data": pathlib.Path("/data/train"),
            "mixed": {1, "a"},
        }
    )
    assert out["opt"] == {"name": "adam", "betas": [0.9, 0.999]}
    assert type(out["opt"]) is dict
    assert out["layers"] == [[1, 2], [1, 2, 3], ["a", "b"]]
    assert out["data"] == "/data/train"
    assert sorted(map(str, out["mixed"])) == ["1", "a"]
    json.dumps(out)


def test_to_jsonable_keys() -> None:
    assert md.to_jsonable({1: "a", 2.5: "b", False: "c", "d": 4}) == {
        "1": "a",
        "2.5": "b",
        "false": "c",
        "d": 4,
    }
    with pytest.raises(ValueError, match="two keys both become '1'"):
        md.to_jsonable({1: "a", "1": "b"})
    with pytest.raises(ValueError, match=r"param 'grid': key \(1, 2\) of type tuple"):
        md.to_jsonable({"grid": {(1, 2): 3}})


def test_to_jsonable_subclasses_become_base_types() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    out = md.to_jsonable({"c": Color.RED, "n": Name("x")})
    assert out == {"c": 1, "n": "x"}
    assert type(out["c"]) is int and type(out["n"]) is str


class TensorLike:
    """Quacks like a torch tensor: .detach() and .tolist() (torch is never imported)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def detach(self) -> TensorLike:
        return self

    def tolist(self) -> Any:
        return self.data


def test_to_jsonable_tensor_like() -> None:
    assert md.to_jsonable({"w": TensorLike([[1.0, 2.0]]), "s": TensorLike(0.5)}) == {
        "w": [[1.0, 2.0]],
        "s": 0.5,
    }


def test_to_jsonable_unsupported_value_names_the_key_path() -> None:
    class Thing:
        pass

    with pytest.raises(ValueError) as excinfo:
        md.to_jsonable({"optimizer": {"betas": [0.9, Thing()]}})
    message = str(excinfo.value)
    assert message.startswith("param 'optimizer.betas[1]': value of type ")
    assert "Thing is not JSON-serializable; pass a number, string, bool, None, list or dict" in (
        message
    )
    with pytest.raises(ValueError, match=r"^param 'raw': value of type bytes is not JSON"):
        md.to_jsonable({"raw": b"\x00"})
    with pytest.raises(ValueError, match=r"^param 'lr': value of type complex"):
        md.to_jsonable(1j, "lr")
    with pytest.raises(ValueError, match=r"^metric 'when': value of type datetime\.datetime"):
        import datetime

        md.to_jsonable({"when": datetime.datetime.now()}, kind="metric")


def test_to_jsonable_self_reference() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        md.to_jsonable({"loop": loop})
    shared = [1, 2]  # the same object twice is fine: it is not a cycle
    assert md.to_jsonable({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}


# --------------------------------------------------------------------------------------------
# module hygiene


def test_module_imports_only_the_standard_library() -> None:
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("meta", {str(METADATA_FILE)!r})
        meta = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(meta)
        meta.collect(None)
        new = set(sys.modules) - before
        bad = sorted(m for m in new if m.split(".")[0] in ("numpy", "torch", "replicate"))
        print(bad)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"

"""Project configuration: finding the project directory and reading ``replicate.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from replicate.errors import ConfigError

CONFIG_NAMES = ("replicate.yaml", "replicate.yml")
REPO_DIR = ".replicate"
KNOWN_KEYS = {"repository"}
MAX_DEPTH = 100


@dataclass(frozen=True)
class ProjectConfig:
    """What ``replicate.yaml`` says (all optional)."""

    repository: str | None = None
    path: Path | None = None  # the yaml file, when there is one


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` holding replicate.yaml or .replicate/, else
    ``start`` itself (the working directory by default)."""
    here = (start or Path.cwd()).resolve()
    d = here
    for _ in range(MAX_DEPTH):
        if any((d / n).is_file() for n in CONFIG_NAMES) or (d / REPO_DIR).is_dir():
            return d
        if d.parent == d:
            break
        d = d.parent
    return here


def load_project_config(project_dir: Path) -> ProjectConfig:
    """Read ``replicate.yaml`` (or ``.yml``) in ``project_dir``; empty config when absent."""
    for n in CONFIG_NAMES:
        p = project_dir / n
        if p.is_file():
            return _parse(p)
    return ProjectConfig()


def _parse(p: Path) -> ProjectConfig:
    import yaml

    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        return ProjectConfig(path=p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must be a mapping of keys to values, like 'repository: s3://...'")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{p}: unknown key {unknown[0]!r}; the only key is 'repository'"
        )
    repo = data.get("repository")
    if repo is not None and (not isinstance(repo, str) or not repo.strip()):
        raise ConfigError(f"{p}: 'repository' must be a URL string like s3://bucket/prefix")
    return ProjectConfig(repository=repo.strip() if repo else None, path=p)


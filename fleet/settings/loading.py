"""Loading the settings: the files, a profile, ``FLEET_*`` variables, and errors that name the file
and the key (see :mod:`fleet.settings`)."""

from __future__ import annotations

import copy
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from fleet.errors import ConfigError
from fleet.keys import QUEUES
from fleet.pipelines.config import PIPELINES_FILE, load_pipelines
from fleet.providers.config import resolve_api_keys
from fleet.quality.config import PolicyOverride
from fleet.router.config import ROUTER_FILE, router_table, shipped_router_file
from fleet.settings.model import Settings

__all__ = ["default_config_dir", "get_settings", "load_settings"]

#: Variables that configure where configuration comes from, not a config key.
_RESERVED_ENV = {
    "FLEET_CONFIG_DIR",
    "FLEET_PROFILE",
    "FLEET_STATE_DIR",
    "FLEET_REDIS_URL",
    "FLEET_BROKER_URL",
    "FLEET_API_TOKEN",
    "FLEET_FLOWER_BASIC_AUTH",
    "FLEET_CALLBACK_SECRET",
}

# --- loading --------------------------------------------------------------------------------------


def default_config_dir() -> Path:
    """The defaults shipped with the package (a wheel), or the source checkout's config."""
    here = Path(__file__).resolve().parent.parent  # fleet/
    packaged = here / "_defaults"
    if (packaged / "config" / "fleet.toml").is_file():
        return packaged
    return here.parent


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("cannot set a key below a plain value", key=".".join(path))
    node[path[-1]] = value


def load_settings(
    *,
    config_dir: str | Path | None = None,
    profile: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Load, merge and validate settings.

    Raises:
        ConfigError: naming the file (or variable), the key and what was expected.
    """
    environ = dict(os.environ if env is None else env)
    root = Path(config_dir or environ.get("FLEET_CONFIG_DIR") or default_config_dir())
    profile = profile or environ.get("FLEET_PROFILE") or None
    data, sources = _read_files(root, profile)
    _apply_env(data, environ, sources)
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted.split("."), value)
        sources[tuple(dotted.split("."))] = "command line"

    data["config_dir"] = str(root)
    data["profile"] = profile
    data["state_dir"] = environ.get("FLEET_STATE_DIR", data.get("state_dir", ".fleet"))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, sources) from None

    settings.pipelines = load_pipelines(root / PIPELINES_FILE)
    _step_gates(settings)
    resolve_api_keys(settings.providers, settings.mock, environ)
    auth = environ.get("FLEET_FLOWER_BASIC_AUTH")
    if auth:
        settings.flower.basic_auth = SecretStr(auth)
    return settings


def _step_gates(settings: Settings) -> None:
    """Each pipeline step's own quality gate, as a policy override of its kind (ahead of the
    ``[quality.kinds]`` globs: a step's kind is exact, so it is the more specific)."""
    own: dict[str, PolicyOverride] = {}
    for pipeline in settings.pipelines.values():
        for step in pipeline.steps:
            if step.quality is not None:
                own[pipeline.kind(step)] = PolicyOverride(**step.quality.model_dump(exclude_none=True))
    if own:
        settings.quality.kinds = {**own, **settings.quality.kinds}


#: Where each key came from: a key path (its longest known prefix) -> file, profile or variable.
_Sources = dict[tuple[str, ...], str]


def _read_files(root: Path, profile: str | None) -> tuple[dict[str, Any], _Sources]:
    """The config directory's files as one table, with the profile applied, and their sources."""
    fleet_file = root / "config" / "fleet.toml"
    data = _read_toml(fleet_file)
    sources: _Sources = {(): str(fleet_file)}
    data["router"] = _router_table(root, data, sources)

    profiles = data.pop("profiles", {})
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"unknown profile {profile!r} (defined: {known})", file=str(fleet_file))
        data = _merge(data, profiles[profile])
        for key in profiles[profile]:
            sources[(key,)] = f"{fleet_file} [profiles.{profile}]"

    queues: dict[str, Any] = {}
    for name in QUEUES:
        qfile = root / "queues" / f"{name}.toml"
        if qfile.is_file():
            queues[name] = {"name": name, **_read_toml(qfile)}
            sources[("queues", name)] = str(qfile)
        elif name == "batch":  # a config directory from before the batch lane: its defaults
            queues[name] = {"name": name, "concurrency": 2, "timeout_s": 60.0}
    data["queues"] = _merge(queues, data.get("queues", {}))
    return data, sources


def _router_table(root: Path, fleet_data: dict[str, Any], sources: _Sources) -> dict[str, Any]:
    """The ``[router]`` table: the shipped ``config/router.toml``, under the config directory's own,
    under a ``[router]`` table left in ``fleet.toml`` (its home before router.toml).

    The shipped file is the base because the keyword sets have no defaults in code: a config
    directory without router.toml, or with a partial one, routes as before.
    """
    shipped = shipped_router_file()
    table = router_table(_read_toml(shipped), shipped)
    sources[("router",)] = str(shipped)
    own = root / ROUTER_FILE
    if own.is_file() and own.resolve() != shipped.resolve():
        table = _merge(table, router_table(_read_toml(own), own))
        sources[("router",)] = str(own)
    if "router" in fleet_data:
        fleet_file = sources[()]
        legacy = router_table({"router": fleet_data["router"]}, fleet_file)
        table = _merge(table, legacy)
        sources.update({("router", key): fleet_file for key in legacy})
    return table


def _apply_env(data: dict[str, Any], environ: dict[str, str], sources: _Sources) -> None:
    """``FLEET_REDIS_URL``, then every ``FLEET_<SECTION>__<KEY>`` variable, over ``data``."""
    for var, key in (("FLEET_REDIS_URL", "redis_url"), ("FLEET_BROKER_URL", "url")):
        if environ.get(var):
            data.setdefault("broker", {})[key] = environ[var]
            sources[("broker", key)] = f"environment variable {var}"
    for var, raw in sorted(environ.items()):
        if not var.startswith("FLEET_") or var in _RESERVED_ENV or var.startswith("FLEET_TEST_"):
            continue
        path = [p.lower() for p in var[len("FLEET_") :].split("__") if p]
        if not path:
            continue
        _set_path(data, path, _env_value(raw))
        sources[tuple(path)] = f"environment variable {var}"


def _config_error(exc: ValidationError, sources: _Sources) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(str(p) for p in err["loc"])
    source = sources[()]
    for n in range(len(loc), 0, -1):
        if loc[:n] in sources:
            source = sources[loc[:n]]
            break
    key = ".".join(loc)
    if source.endswith(".toml") and len(loc) >= 2 and loc[0] == "queues" and "queues" in source:
        key = ".".join(loc[2:]) or key
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    got = err.get("input")
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
        msg += f" (got {got!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return ConfigError(msg + more, file=source, key=key, expected=err["msg"])


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once from the environment and the config directory."""
    return load_settings()

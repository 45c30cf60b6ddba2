"""docker-compose.yml: valid against the Compose spec, and every command is a real `fleet` invocation."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from fleet.cli import app
from fleet.keys import QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT.parent / "shared" / "compose-spec.schema.json"

#: Services the fleet needs; the broker may be called valkey or redis.
REQUIRED_SERVICES = ("router", "mini", "standard", "full", "fast", "escalations", "flower", "jaeger")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict) and services, "docker-compose.yml has no services"
    return services


@pytest.fixture(scope="module")
def cli() -> Any:
    # Duck-typed: typer >= 0.16 ships its own copy of click, so isinstance(click.Group) does not hold.
    command = typer.main.get_command(app)
    assert isinstance(getattr(command, "commands", None), dict), "the fleet app must be a command group"
    return command


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _resolve(cli: Any, args: list[str]) -> tuple[Any, list[str], list[str]]:
    """Walk ``fleet VERB [SUBVERB ...]``; return the leaf command, its path and the remaining args."""
    command = cli
    path = ["fleet"]
    rest = list(args)
    while isinstance(getattr(command, "commands", None), dict):  # a group: walk one level down
        assert rest, f"`{' '.join(path)}` needs a sub-command"
        verb = rest.pop(0)
        sub = command.commands.get(verb)
        assert sub is not None, f"`{' '.join(path)}` has no command {verb!r}: {sorted(command.commands)}"
        command, path = sub, [*path, verb]
    return command, path, rest


def _check_fleet_invocation(cli: Any, name: str, argv: list[str]) -> None:
    command, path, rest = _resolve(cli, argv[1:])
    opts = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    flags = {
        opt
        for param in command.params
        if param.param_type_name == "option" and param.is_flag
        for opt in (*param.opts, *param.secondary_opts)
    }
    positionals: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            where = f"service {name}: `{' '.join(path)}`"
            assert option in opts, f"{where} has no option {option}: {sorted(opts)}"
            takes_value = "=" not in arg and option not in flags
            i += 2 if takes_value else 1
        else:
            positionals.append(arg)
            i += 1
    # The real parser has the last word: arity, types, ranges (e.g. --port must be an int).
    ctx = command.make_context(" ".join(path), list(rest), resilient_parsing=False)
    if path[-1] == "worker":
        assert positionals, f"service {name}: `fleet worker` needs a queue"
        assert positionals[0] in QUEUES, f"service {name}: unknown queue {positionals[0]!r}, not in {QUEUES}"
        assert ctx.params.get("queue") == positionals[0]


def _celery_app(argv: list[str]) -> str | None:
    """The value of ``-A``/``--app`` in a celery command line, if any."""
    for i, arg in enumerate(argv):
        if arg in ("-A", "--app") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--app="):
            return arg.split("=", 1)[1]
        if arg.startswith("-A") and len(arg) > 2:
            return arg[2:]
    return None


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    # Given the official Compose schema beside the repository (skipped if absent)
    if not SCHEMA_FILE.is_file():
        pytest.skip(f"Compose spec schema not found at {SCHEMA_FILE}")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    # When the file is validated / Then there are no errors
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_every_part_of_the_fleet_has_a_service(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"missing services: {missing}"
    assert "valkey" in services or "redis" in services


def test_each_queue_has_a_worker_service(services: dict[str, dict[str, Any]]) -> None:
    # Given the services / Then every queue of the fleet is consumed by `fleet worker QUEUE` somewhere
    consumed = {argv[2] for argv in map(_argv, services.values()) if argv[:2] == ["fleet", "worker"]}
    assert consumed == set(QUEUES)


def test_every_command_is_a_real_invocation(services: dict[str, dict[str, Any]], cli: Any) -> None:
    checked = 0
    for name, service in services.items():
        argv = _argv(service)
        if not argv:
            assert "image" in service, f"service {name}: no command and no image"
            continue
        if argv[0] == "fleet":
            _check_fleet_invocation(cli, name, argv)
            checked += 1
        elif argv[0] == "celery":
            target = _celery_app(argv)
            assert target is not None, f"service {name}: celery without -A"
            assert target.split(":")[0].split(".")[0] == "fleet", f"service {name}: -A {target}"
            checked += 1
        else:
            # Third-party images (valkey, jaeger) run their own binaries; ours must not hide there.
            assert service.get("build") is None, f"service {name}: built from our image but runs {argv[0]}"
    assert checked >= len(QUEUES) + 1


def test_fleet_services_share_the_environment(services: dict[str, dict[str, Any]]) -> None:
    # Given the services built from our Dockerfile / Then each reaches the broker and exports traces,
    # and no provider key has a default baked into the file.
    ours = {name: s for name, s in services.items() if s.get("build") is not None}
    assert ours
    for name, service in ours.items():
        env = service.get("environment")
        assert isinstance(env, dict), f"service {name}: environment must be a mapping"
        assert str(env.get("FLEET_REDIS_URL", "")).startswith("redis://"), name
        assert env.get("OTEL_SERVICE_NAME"), name
        for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY"):
            assert env.get(key) is None, f"service {name}: {key} must pass through, not have a value"
    flower_env = services["flower"]["environment"]
    assert "FLEET_FLOWER_BASIC_AUTH" in flower_env

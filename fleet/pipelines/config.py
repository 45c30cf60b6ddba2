"""``config/pipelines.toml``: pipelines as data (see docs/pipelines.md).

A pipeline is a list of named steps. Each step runs as a job on a tier's queue (or through the
router), its prompt a template over the request and earlier steps' outputs::

    {{input}}                 the request's prompt
    {{steps.NAME}}            a step's output (a map step's: the JSON list of its items' outputs)
    {{steps.NAME.FIELD}}      a field of a step's JSON output (strings as they are, the rest as JSON)
    {{item}} {{index}} {{count}}   in a map step: this item, its number (from 1), how many there are

A map step fans out over a list: ``map = "chunks"`` (the input cut into ``chunk_chars`` pieces at
paragraph or line ends) or ``map = "steps.NAME.FIELD"`` (a JSON list an earlier step produced);
the step after it is the join (reduce) and runs once every item has its answer.

A bad file fails at start with the file, the pipeline, the step and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.errors import ConfigError, InvalidRequest
from fleet.quality.config import GateAction

__all__ = [
    "PIPELINES_FILE",
    "Pipeline",
    "Step",
    "StepGate",
    "known",
    "load_pipelines",
    "references",
]

#: Where a config directory keeps its pipelines (relative to the directory).
PIPELINES_FILE = Path("config") / "pipelines.toml"

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: ``{{ path }}`` in a template: input, item, index, count, steps.NAME, steps.NAME.FIELD.
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^(input|item|index|count|steps\.[a-z][a-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?)$")

#: Where a step runs: a tier's queue, or the router (which picks the tier from the rendered prompt).
StepTier = Literal["mini", "standard", "full", "fast", "router"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepGate(_Strict):
    """A step's own quality gate (over its tier's policy): e.g. every draft judged, and a failed
    one rewritten by the full tier."""

    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: int | None = Field(default=None, ge=1, le=5)
    action: GateAction | None = None
    #: The tier whose chain rewrites a failed answer ("polish"); default: the next tier up.
    polish_tier: Literal["standard", "full"] | None = None


class Step(_Strict):
    name: str
    tier: StepTier
    prompt: str = Field(min_length=1)
    system: str | None = None
    response_schema: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, gt=0, le=1_000_000)
    #: Fan out: "chunks" (the input in pieces) or "steps.NAME.FIELD" (a list an earlier step made).
    map: str | None = None
    #: With ``map = "chunks"``: the largest piece, in characters.
    chunk_chars: int = Field(default=6000, ge=200, le=1_000_000)
    #: The most items a map step fans out to (a longer list is an error of the step, not a cut).
    max_items: int = Field(default=100, ge=1, le=10_000)
    #: The job's kind (cost lines, pass rates, quality overrides); default ``pipeline.<pipeline>.<step>``.
    kind: str | None = Field(default=None, min_length=1, max_length=128)
    quality: StepGate | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("a step name is lowercase letters, digits and _ (starting with a letter)")
        return value

    @field_validator("response_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value


class Pipeline(_Strict):
    name: str = ""
    description: str = ""
    steps: list[Step] = Field(min_length=1, max_length=32)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.name == name)

    def kind(self, step: Step) -> str:
        return step.kind or f"pipeline.{self.name}.{step.name}"


def known(pipelines: dict[str, Pipeline], name: str) -> Pipeline:
    """The pipeline ``name``.

    Raises:
        InvalidRequest: no pipeline of that name is configured.
    """
    found = pipelines.get(name)
    if found is None:
        names = ", ".join(sorted(pipelines)) or "none are configured"
        raise InvalidRequest([f"pipeline: unknown pipeline {name!r} (known: {names})"])
    return found


def references(template: str) -> list[str]:
    """The placeholders of ``template`` (``steps.extract.facts``, ``input``, ...), in order."""
    return [m.group(1) for m in PLACEHOLDER.finditer(template)]


def load_pipelines(path: Path) -> dict[str, Pipeline]:
    """The pipelines of ``path`` (none when the file does not exist).

    Raises:
        ConfigError: naming the file, the pipeline, the step and the key.
    """
    if not path.is_file():
        return {}
    import tomllib

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    unknown = sorted(set(data) - {"pipelines"})
    if unknown:
        raise ConfigError(
            "unknown key (a pipeline goes under [pipelines.NAME])", file=str(path), key=unknown[0]
        )
    table = data.get("pipelines", {})
    if not isinstance(table, dict):
        raise ConfigError("expected a table of pipelines", file=str(path), key="pipelines")
    return {name: _pipeline(path, name, raw) for name, raw in table.items()}


def _pipeline(path: Path, name: str, raw: Any) -> Pipeline:
    where = f"pipelines.{name}"
    if not NAME_RE.match(name):
        raise ConfigError("a pipeline name is lowercase letters, digits and _", file=str(path), key=where)
    if not isinstance(raw, dict):
        raise ConfigError("expected a table with a steps list", file=str(path), key=where)
    try:
        pipeline = Pipeline.model_validate({**raw, "name": name})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(_message(err), file=str(path), key=_key(where, raw, err["loc"])) from None
    seen: list[str] = []
    for i, step in enumerate(pipeline.steps):
        at = _step_key(where, i, step.name)
        if step.name in seen:
            raise ConfigError("a step of that name comes earlier", file=str(path), key=f"{at}.name")
        _check_step(path, at, step, seen, pipeline)
        seen.append(step.name)
    if pipeline.steps[-1].map is not None:
        raise ConfigError(
            "the last step cannot be a map: a step after it must join the items",
            file=str(path), key=f"{_step_key(where, len(pipeline.steps) - 1, pipeline.steps[-1].name)}.map",
        )  # fmt: skip
    return pipeline


def _check_step(path: Path, at: str, step: Step, earlier: list[str], pipeline: Pipeline) -> None:
    for ref in references(step.prompt) + references(step.system or ""):
        if not _PATH.match(ref):
            raise ConfigError(
                f"unknown placeholder {{{{{ref}}}}} (expected input, item, index, count, steps.NAME "
                "or steps.NAME.FIELD)", file=str(path), key=f"{at}.prompt",
            )  # fmt: skip
        if ref in ("item", "index", "count") and step.map is None:
            raise ConfigError(
                f"{{{{{ref}}}}} is only known in a map step", file=str(path), key=f"{at}.prompt"
            )
        if ref.startswith("steps."):
            target = ref.split(".")[1]
            if target not in earlier:
                raise ConfigError(
                    f"{{{{{ref}}}}} names no earlier step (earlier: {', '.join(earlier) or 'none'})",
                    file=str(path), key=f"{at}.prompt",
                )  # fmt: skip
    if step.map is not None and step.map != "chunks":
        parts = step.map.split(".")
        if len(parts) != 3 or parts[0] != "steps" or parts[1] not in earlier:
            raise ConfigError(
                f"map must be \"chunks\" or \"steps.NAME.FIELD\" naming an earlier step (got {step.map!r})",
                file=str(path), key=f"{at}.map",
            )  # fmt: skip
        if pipeline.step(parts[1]).map is not None:
            raise ConfigError(
                "a map cannot fan out over another map's items", file=str(path), key=f"{at}.map"
            )


def _step_key(where: str, index: int, name: str | None) -> str:
    return f"{where}.steps[{index}]" + (f" ({name})" if name else "")


def _key(where: str, raw: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = raw.get("steps") or []
        name = steps[loc[1]].get("name") if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else None
        rest = ".".join(str(p) for p in loc[2:])
        return _step_key(where, loc[1], name if isinstance(name, str) else None) + (
            f".{rest}" if rest else ""
        )
    return ".".join([where, *(str(p) for p in loc)])


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    got = err.get("input")
    if not isinstance(got, dict | list):
        msg += f" (got {got!r})"
    return msg

"""The fleet's Lua scripts: one file each under ``fleet/lua/``, loaded by name (Dramatiq's
``rate_limits/backends/redis.py`` is the model).

A script is built from its library files (functions shared by several scripts, or kept apart as a
concern of their own: ``gcra.lua``, ``breaker_allow.lua``, ``gate.lua``, ``adjust_fn.lua``,
``fair_admit.lua``) followed by its main part. The typed wrappers that build each script's KEYS and
ARGV, and turn its reply into a dataclass, live beside their callers: :mod:`fleet.limits.redis`,
:mod:`fleet.middleware.start` and :mod:`fleet.middleware.tail`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["SCRIPTS", "register", "source"]

#: Every script, as the files it is built from: its libraries first, then its main part.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "acquire": ("gcra", "acquire"),
    "admit": ("gcra", "breaker_allow", "gate", "admit"),
    "adjust": ("adjust_fn", "adjust"),
    "breaker_check": ("breaker_allow", "breaker_check"),
    "breaker_record": ("breaker_record",),
    "cancel": ("cancel",),
    "claim": ("claim",),
    "drop_if_owner": ("drop_if_owner",),
    "job_finish": ("adjust_fn", "job_finish"),
    "job_start": ("gcra", "breaker_allow", "gate", "fair_admit", "job_start"),
    "pace": ("adjust_fn", "pace"),
    "pipeline_step": ("pipeline_step",),
    "priority_put": ("priority_put",),
    "priority_take": ("priority_take",),
    "unacked_add": ("unacked_add",),
    "unacked_drop": ("unacked_drop",),
}


@cache
def source(name: str) -> str:
    """The whole source of script ``name``.

    Raises:
        KeyError: no such script.
    """
    parts = SCRIPTS[name]
    return "\n".join(files("fleet").joinpath("lua", f"{part}.lua").read_text("utf-8") for part in parts)


def register(client: Any, name: str) -> Any:
    """Script ``name`` registered on a redis-py ``client``: called with ``keys=`` and ``args=``, it runs
    by EVALSHA and loads itself once per server (after a restart, too)."""
    return client.register_script(source(name))

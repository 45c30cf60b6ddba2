"""Typed settings: ``config/*.toml`` and ``queues/*.toml``, then a profile, then ``FLEET_*`` variables.

The order of precedence, lowest first:

1. the files in the config directory (``FLEET_CONFIG_DIR``; else the defaults shipped with the package):
   ``config/fleet.toml``, ``config/router.toml`` (over the shipped one, key by key) and ``queues/*.toml``,
2. the profile named by ``FLEET_PROFILE`` or ``--profile`` (``[profiles.<name>]`` in ``fleet.toml``),
3. ``FLEET_<SECTION>__<KEY>=value`` variables (``FLEET_QUEUES__FULL__CONCURRENCY=8``), values in TOML
   syntax where they parse as TOML, else taken as strings; ``FLEET_REDIS_URL`` sets
   ``broker.redis_url`` and ``FLEET_BROKER_URL`` sets ``broker.url``.

Each owner declares its own section in a leaf module: the router's in :mod:`fleet.router.config`, the
retry policy in :mod:`fleet.retry`, the providers' and the mock's in :mod:`fleet.providers.config`,
the chaos hook's in :mod:`fleet.middleware.chaos`, the quality gate's in :mod:`fleet.quality.config`.
This module declares the rest, composes them into :class:`Settings` and loads it.

A bad value fails at start with the file, the key and what was expected (:class:`ConfigError`).
Build the object once with :func:`get_settings` and pass it in; only this module and the CLI read
the environment.
"""

from __future__ import annotations

from fleet.budgets import BudgetSettings, TeamBudget
from fleet.fairness import FairnessSettings
from fleet.settings.loading import default_config_dir, get_settings, load_settings
from fleet.settings.model import (
    ApiSettings,
    BreakerSettings,
    BrokerSettings,
    CallbackSettings,
    EmbeddedSettings,
    EscalationSettings,
    FlowerSettings,
    LimitsSettings,
    QueueSettings,
    RecoverySettings,
    Settings,
    TelemetrySettings,
    mask_url,
    parse_rate,
)

__all__ = [
    "ApiSettings",
    "BreakerSettings",
    "BrokerSettings",
    "BudgetSettings",
    "CallbackSettings",
    "EmbeddedSettings",
    "EscalationSettings",
    "FairnessSettings",
    "FlowerSettings",
    "LimitsSettings",
    "QueueSettings",
    "RecoverySettings",
    "Settings",
    "TeamBudget",
    "TelemetrySettings",
    "default_config_dir",
    "get_settings",
    "load_settings",
    "mask_url",
    "parse_rate",
]

"""The public surface is curated: a change to it is a deliberate change to this test."""

from __future__ import annotations

import fleet
from fleet import aio, errors, models, producer

#: Where each public name is defined: ``fleet.X`` must be that very object.
PUBLIC = {
    "AsyncClient": aio,
    "Attempt": models,
    "BrokerError": errors,
    "BudgetExceeded": errors,
    "Client": producer,
    "FleetError": errors,
    "Hints": models,
    "InvalidRequest": errors,
    "JobStatus": models,
    "ResultTimeout": errors,
    "RoutingDecision": models,
    "TaskFailed": errors,
    "TaskNotFound": errors,
    "TaskRequest": models,
    "TaskResult": models,
    "Tier": models,
    "result": producer,
    "submit": producer,
}


def test_public_names() -> None:
    assert fleet.__all__ == sorted(PUBLIC)
    for name, home in PUBLIC.items():
        assert getattr(fleet, name) is getattr(home, name), name


def test_every_error_the_producer_raises_is_exported() -> None:
    # Given the errors that submit/result document, When a caller catches them, Then fleet has them
    for name in (
        "InvalidRequest",
        "BudgetExceeded",
        "BrokerError",
        "ResultTimeout",
        "TaskFailed",
        "TaskNotFound",
    ):
        assert issubclass(getattr(fleet, name), fleet.FleetError)


def test_every_error_has_a_unique_stable_code() -> None:
    classes = [
        obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, errors.FleetError)
    ]
    assert {cls.__name__ for cls in classes} <= set(errors.__all__)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert errors.error_for_code(cls.code) is cls


def test_every_provider_outcome_is_an_escalation_reason() -> None:
    provider_codes = {
        obj.code
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.ProviderError)
    }
    assert provider_codes <= {r.value for r in errors.Reason}
    assert errors.Reason.of("server_error") is errors.Reason.SERVER_ERROR
    assert errors.Reason.of("no such code") is errors.Reason.CHAIN_EXHAUSTED

"""The public surface is curated: a change to it is a deliberate change to this test."""

from __future__ import annotations

import fleet
from fleet import errors


def test_public_names() -> None:
    assert fleet.__all__ == [
        "Attempt",
        "Client",
        "FleetError",
        "Hints",
        "InvalidRequest",
        "ResultTimeout",
        "RoutingDecision",
        "TaskRequest",
        "TaskResult",
        "Tier",
        "result",
        "submit",
    ]
    for name in fleet.__all__:
        assert getattr(fleet, name) is not None


def test_every_error_has_a_unique_stable_code() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name != "error_for_code"]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert issubclass(cls, errors.FleetError)
        assert errors.error_for_code(cls.code) is cls

"""The quality gate: confidence signals, a judge, what to do with an answer that fails, and the
pass rates that feed routing (see docs/quality.md).

Import from the modules (``fleet.quality.gate.QualityGate``); this package imports nothing, so
``fleet.settings`` can read :mod:`fleet.quality.config` without the gate's machinery.
"""

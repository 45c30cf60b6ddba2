"""The tier job's middlewares: one small class per concern (see :mod:`fleet.middleware.base`).

Import the classes from their modules (``fleet.middleware.lock.JobLock``); this package itself
imports nothing, so ``fleet.settings`` can read :class:`fleet.middleware.chaos.ChaosSettings`
without pulling in the job machinery.
"""

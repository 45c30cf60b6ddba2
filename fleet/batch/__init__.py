"""The batch lane: jobs that can wait go to the providers' batch APIs, at batch prices.

A job whose ``hints.deadline_s`` is at least ``batch.min_deadline_s`` is routed as any job is (tier,
first link), then sent to the ``batch`` queue instead of its tier's (:func:`fleet.batch.lane.batch_link`).
A batch worker pools it per ``provider:model`` in Redis and acks its message. One batch worker at a
time (a lease) submits each pool as one provider batch when it is full or old enough, polls the batches
in flight, and sends each job on to its tier queue: with its item's answer (``envelope.batch``: the
tier runs it as a live job, quality gate, cost line and result included, without calling a model),
or without one (its item failed, or its batch will not end in time) for its live chain, before its
deadline. See docs/architecture.md ("The batch lane").

``fleet.batch.config`` stays free of the fleet's other modules: the settings import it.
"""

"""What differs between the brokers: RabbitMQ's quorum queues, delivery limit, dead-letter exchange
and publisher confirms; Redis's single list per queue and reliable fetch; dead letters read back."""

from __future__ import annotations

from fleet import brokers
from fleet.deadletters import dead_letter_escalation
from fleet.errors import Reason
from fleet.models import JobEnvelope, RoutingDecision, Tier
from fleet.settings import load_settings

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_rabbitmq_queues_are_quorum_queues_with_the_delivery_limit_and_dead_letters() -> None:
    settings = load_settings(env={}, overrides={"limits.max_deliveries": 4})
    queues = brokers.queues(settings, AMQP)
    assert {q.name for q in queues} == {"router", "mini", "standard", "full", "fast", "batch", "escalations"}
    for queue in queues:
        assert queue.durable
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 4,
            "x-dead-letter-exchange": brokers.DEAD_EXCHANGE,
        }
    config = brokers.transport_config(settings, AMQP)
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert config["worker_detect_quorum_queues"] is True


def test_redis_keeps_plain_lists_one_per_queue_with_reliable_fetch() -> None:
    settings = load_settings(env={})
    assert all(q.queue_arguments is None for q in brokers.queues(settings, "redis://localhost:6379/0"))
    options = brokers.transport_config(settings, "redis://localhost:6379/0")["broker_transport_options"]
    assert options["fleet_reliable_fetch"] is True
    assert options["visibility_timeout"] == settings.visibility_timeout()


def _body(tier: str) -> list[object]:
    routing = RoutingDecision(tier=Tier(tier), reasons=["test"], classifier="pinned")
    envelope = JobEnvelope(id="t1", submitted_at=1.0, routing=routing)
    return [[{"prompt": "Design it"}, envelope.model_dump(mode="json")], {}, {}]


def test_a_dead_letter_past_the_delivery_limit_is_a_poison_message() -> None:
    headers = {"id": "t1", "task": "fleet.execute",
               "x-death": [{"reason": "delivery_limit", "queue": "full", "count": 1}]}  # fmt: skip
    new = dead_letter_escalation(headers, _body("full"), max_deliveries=5)
    assert new is not None and new.task_id == "t1" and new.reason is Reason.POISON_MESSAGE
    assert new.queue == "full" and new.tier == Tier.FULL and new.submitted_at == 1.0
    assert new.request == {"prompt": "Design it"} and "more than 5 times" in new.detail


def test_a_rejected_dead_letter_was_escalated_when_it_was_refused() -> None:
    headers = {"id": "t2", "x-death": [{"reason": "rejected", "queue": "mini"}]}
    assert dead_letter_escalation(headers, b"{not json", max_deliveries=5) is None


def test_a_dead_letter_that_is_not_a_task_message_still_reaches_people() -> None:
    headers = {"x-death": [{"reason": "delivery_limit", "queue": "mini", "time": 5}]}
    new = dead_letter_escalation(headers, b"{not json", max_deliveries=5)
    assert new is not None and new.tier == Tier.MINI and new.request == "{not json"

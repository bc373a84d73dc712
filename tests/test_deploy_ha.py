"""docker-compose.rabbitmq.yml, the override that makes RabbitMQ the broker (issue 18): every
service it touches exists in docker-compose.yml, gets an amqp:// CLOUDOPS_BROKER_URL that the
settings and worker.app read as RabbitMQ, and waits for a healthy RabbitMQ and Redis."""

from __future__ import annotations

from pathlib import Path

import yaml

from events.settings import Settings
from tests.test_deploy import COMPOSE, referenced, substitute
from worker.app import broker_url, celery_config, is_redis_url

REPO = Path(__file__).resolve().parents[1]
OVERRIDE = yaml.safe_load((REPO / "docker-compose.rabbitmq.yml").read_text())


def test_the_override_makes_rabbitmq_the_broker_of_every_cloudops_service() -> None:
    services = OVERRIDE["services"]
    rabbitmq = services.pop("rabbitmq")
    assert "healthcheck" in rabbitmq and rabbitmq["image"].startswith("rabbitmq:")
    assert set(services) == {"relay", "worker", "flower"} <= set(COMPOSE["services"])
    for name, service in services.items():
        url = substitute(service["environment"]["CLOUDOPS_BROKER_URL"], {})
        settings = Settings(redis_url="redis://redis:6379/0", broker_url=url)
        assert not is_redis_url(broker_url(settings)), name
        # Queues declared with x-max-priority: priorities (depth-first playbooks) hold there.
        assert celery_config(settings)["task_queue_max_priority"] == 9
        assert service["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "rabbitmq": {"condition": "service_healthy"},
        }
    # Every variable it uses has a default: the example env file needs nothing more.
    text = (REPO / "docker-compose.rabbitmq.yml").read_text()
    for var in referenced(text):
        assert "${" + var + ":-" in text, f"{var} has no default"

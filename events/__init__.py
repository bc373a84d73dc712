"""The event contract and the Redis event bus. Knows nothing of Celery or HTTP."""

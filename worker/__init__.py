"""Celery workers: run commands and playbook steps, publish their events. Knows nothing of HTTP."""

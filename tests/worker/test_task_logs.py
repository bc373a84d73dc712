"""Celery's pool logs each task it applies at DEBUG with the raw message: worker.app's filter
keeps the arguments (secret params travel in them) out of that line."""

from __future__ import annotations

import logging

import pytest
from celery.concurrency.base import BasePool

import worker.app  # noqa: F401 - installs the filter

SECRET = "s3cr3t-value-that-must-not-be-logged"


def test_the_pool_logs_no_task_argument_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    body = f'[["ex_1", 0], {{"secrets": {{"api_key": "{SECRET}"}}}}, {{}}]'
    with caplog.at_level(logging.DEBUG, logger="celery.pool"):
        pool = BasePool(limit=1)  # made at DEBUG: it then logs what it applies
        pool.on_apply = lambda *a, **k: None
        pool.apply_async(len, args=("cloudops.run_playbook_step", "ex_1.s1", {}, body))
    lines = [r.getMessage() for r in caplog.records if r.name == "celery.pool"]
    assert len(lines) == 1 and lines[0].startswith("TaskPool: Apply"), lines
    assert SECRET not in lines[0] and "[arguments not logged]" in lines[0]

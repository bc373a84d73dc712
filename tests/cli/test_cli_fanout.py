"""`cloudops run --targets` on real workers: the command runs as a one-step playbook on every
matching host, each line prefixed with its host; bad targets are usage errors."""

from __future__ import annotations

import socket

import pytest

from events.hosts import HostRegistry
from events.settings import Settings
from tests.cli.test_cli import cloudops
from tests.conftest import StartWorker, worker_env
from tests.helpers import CeleryDispatcher, wait_until


@pytest.mark.integration
def test_run_with_targets_prefixes_each_line_with_its_host(
    start_worker: StartWorker, settings: Settings
) -> None:
    for n in (1, 2):
        start_worker(hostname=f"w{n}@t", queues="web", concurrency=1, env={"MARK": f"w{n}"})
    start_worker(hostname="db@t", queues="db", concurrency=1, env={"MARK": "db"})
    d = CeleryDispatcher(settings)
    wait_until(
        lambda: sum(h["online"] for h in HostRegistry(d.rt.keys).read(d.rt.redis)) == 3,
        30,
        what="workers online",
    )
    command = "echo $MARK; printf part; sleep 0.2; echo ial"
    r = cloudops("run", "--targets", "queue=web", "--", command, env=worker_env(settings))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [
        "w1@t | partial",
        "w1@t | w1",
        "w2@t | partial",
        "w2@t | w2",
    ]
    assert "\u2713 w1@t completed exit 0" in r.stderr
    table = r.stderr.split("\u2713 step 1")[1].splitlines()[1:4]
    assert [line.split()[:3] for line in table] == [
        ["HOST", "STATUS", "EXIT"],
        ["w1@t", "completed", "0"],
        ["w2@t", "completed", "0"],
    ]
    r = cloudops("run", "--targets", "hosts=w2@t,db@t", "--", "exit 3", env=worker_env(settings))
    assert r.returncode == 3, r.stderr
    assert "\u2717 db@t failed exit 3" in r.stderr and "\u2717 w2@t failed exit 3" in r.stderr
    d.rt.publisher.close(timeout_s=5)


@pytest.mark.parametrize("targets", ["web", "queue=", "host=a", "label=k", "queue=a,hosts=b"])
def test_bad_targets_are_one_line_and_exit_2(targets: str) -> None:
    r = cloudops("run", "--targets", targets, "--", "true")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "targets" in r.stderr


def test_embedded_mode_fans_out_to_its_one_worker() -> None:
    r = cloudops("run", "--targets", "queue=cloudops", "--", "echo hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"embedded@{socket.gethostname()} | hi\n"
    r = cloudops("run", "--targets", "label=tier=web", "--", "echo hi")
    assert r.returncode == 1 and "no online host matches targets" in r.stderr

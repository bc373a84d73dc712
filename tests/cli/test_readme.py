"""The README's first command runs embedded on a machine where nothing listens on 6379.

It runs the README's own command line (its `cloudops run` part; the venv is the test's) in a
network namespace of its own, where no Redis can answer, with no CLOUDOPS_* variable set.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from tests.helpers import REPO, cloudops_argv, embedded_env


def readme_first_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README opens with a bash block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    run = lines[0].split("&&")[-1].strip()
    argv = shlex.split(run)
    assert argv[0].endswith("cloudops") and argv[1] == "run", run
    return argv[1:]


def test_readme_first_command_runs_with_no_redis_reachable() -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to cut the network")
    args = readme_first_command()
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    r = subprocess.run(
        ["unshare", "-n", *cloudops_argv(*args)],
        env=embedded_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "[cloudops] completed" in r.stderr
    assert r.stdout.strip(), "the example playbook prints"

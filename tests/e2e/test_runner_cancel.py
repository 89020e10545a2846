"""Cancel means cancel: SIGTERM or Ctrl-C (SIGINT) of the runner takes its own prompt off the server, whether
the prompt is running (interrupted) or still queued (removed), and leaves another client's prompt alone.

Uses the session server of tests/e2e/conftest.py; a "long" prompt is the single-garment workflow at 64x64 with
thousands of steps on the tiny model, always interrupted before it ends.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import time

import pytest

from anydressing_run.client import ComfyClient
from anydressing_run.run import Substitutions, substitute

from anydressing_run.server import PACK_DIR

from e2e_support import load_api, quick_flags, runner_command, runner_env

pytestmark = pytest.mark.slow

LONG_STEPS = 5000


def graph_for(tiny_files, steps: int, seed: int) -> dict:
    subs = Substitutions(checkpoint=tiny_files["checkpoint"].name, width=64, height=64, garment_size=(64, 64),
                         steps=steps, seed=seed)
    return substitute(copy.deepcopy(load_api("anydressing_single_garment")), subs, {})


def wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def start_runner(e2e_server, tiny_files, tmp_path):
    """The runner on the session server with a long run; returns ``(process, its prompt id)`` once queued."""
    log = tmp_path / "runner.log"
    flags = quick_flags(tiny_files)
    flags[flags.index("--steps") + 1] = LONG_STEPS
    proc = subprocess.Popen(runner_command("run", "single_garment", "--server", e2e_server.url, "--no-probe",
                                           "--quiet", "--verbose", "--output", tmp_path / "out", *flags),
                            cwd=PACK_DIR, env=runner_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def queued():
        for line in log.read_text().splitlines():
            if line.startswith("queued prompt "):
                return line.split()[-1]
        assert proc.poll() is None, log.read_text()
        return None

    return proc, wait_for(queued, "the runner to queue its prompt"), log


def finish(client, prompt_id):
    """Interrupt a prompt the test itself queued, and wait for the queue to empty."""
    client.cancel(prompt_id)
    wait_for(lambda: client.queue_ids() == (set(), set()), "the queue to empty")


@pytest.fixture
def empty_queue(client):
    wait_for(lambda: client.queue_ids() == (set(), set()), "an empty queue before the test")
    yield
    wait_for(lambda: client.queue_ids() == (set(), set()), "an empty queue after the test")


def test_sigterm_interrupts_our_running_prompt_and_keeps_another_clients_queued_one(
        e2e_server, client, tiny_files, samples, tmp_path, empty_queue):
    proc, ours, log = start_runner(e2e_server, tiny_files, tmp_path)
    wait_for(lambda: ours in client.queue_ids()[0], "the runner's prompt to run")
    other = ComfyClient(e2e_server.url)  # another user of the same server
    theirs = other.queue(graph_for(tiny_files, steps=2, seed=11))
    assert theirs in client.queue_ids()[1]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    said = log.read_text()
    assert f"prompt {ours} interrupted on the server" in said or f"prompt {ours}: interrupt sent" in said, said
    entry = wait_for(lambda: client.history(ours), "the interrupted prompt in the history")
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    assert ours not in set().union(*client.queue_ids())
    done = other.wait(theirs, graph_for(tiny_files, steps=2, seed=11), timeout=300)
    assert done["status"]["status_str"] == "success", "the other client's prompt was cancelled too"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_removes_our_queued_prompt_and_leaves_another_clients_running_one(
        e2e_server, client, tiny_files, samples, tmp_path, empty_queue):
    other = ComfyClient(e2e_server.url)
    theirs = other.queue(graph_for(tiny_files, steps=LONG_STEPS, seed=12))
    try:
        wait_for(lambda: theirs in client.queue_ids()[0], "the other client's prompt to run")
        proc, ours, log = start_runner(e2e_server, tiny_files, tmp_path)
        wait_for(lambda: ours in client.queue_ids()[1], "the runner's prompt to wait in the queue")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 128 + signal.SIGINT, log.read_text()
        assert f"prompt {ours} removed from the server's queue" in log.read_text()
        running, pending = client.queue_ids()
        assert ours not in running | pending
        assert running == {theirs}, "the other client's running prompt was interrupted"
        assert client.history(ours) is None, "the removed prompt ran anyway"
    finally:
        finish(other, theirs)

"""The one review fix left to move: the scheduler surviving a failed idle unload (it goes to
test_scheduler.py)."""

from __future__ import annotations

import anyio

from llama_api.contract.records import ModelSpec
from llama_api.scheduling.entries import Settings
from llama_api.scheduling.scheduler import Scheduler
from llama_api.workers.plugins import Plugins


def test_a_failing_idle_unload_is_logged_and_the_scheduler_goes_on(models_dir, monkeypatch,
                                                                   caplog):
    monkeypatch.setenv("LLAMA_API_PLUGINS", "echo")
    spec = ModelSpec(id="fast", backend="echo", path=str(models_dir / "fast.echo"), plugin="echo")

    async def main():
        scheduler = Scheduler(Settings(idle_timeout=0.3), plugins=Plugins())
        real_unload, attempts = scheduler._unload, []

        async def unload_failing_once(entry, reason="request"):
            attempts.append(reason)
            if len(attempts) == 1:
                raise RuntimeError("the worker would not stop")
            await real_unload(entry, reason)

        scheduler._unload = unload_failing_once
        async with scheduler.running():
            async with scheduler.lease(spec):
                pass
            with anyio.fail_after(10):
                while "fast" in scheduler.entries or len(attempts) < 2:
                    await anyio.sleep(0.05)
            return attempts

    assert anyio.run(main)[:2] == ["idle", "idle"]  # tried again after the failure
    assert "unloading idle model fast failed" in caplog.text

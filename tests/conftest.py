from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Build Daemon objects on a fresh spool; every one is killed at teardown."""
    made: list[Daemon] = []

    def make(sub: str = "d", **config: Any) -> Daemon:
        d = Daemon(tmp_path / sub if sub != "d" else tmp_path, **config)
        d.tmp.mkdir(exist_ok=True)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A started daemon with the fake engine and one worker."""
    return make_daemon().start()


@pytest.fixture(scope="module")
def whisper_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per module with the real faster-whisper engine and bundled tiny.en."""
    # batch_size: cross-job batching is off by default on the CPU; these tests check it.
    d = Daemon(tmp_path_factory.mktemp("whisper"), engine="faster-whisper", workers=1,
               settle_seconds=0.5, batch_size=8)
    d.start(wait_ready=False)
    d.wait_ready(timeout=120)
    yield d
    d.close()

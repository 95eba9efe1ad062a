"""Fixtures booting a real systemd in systemd-nspawn (see nspawn.py).

`container`: one booted bookworm per test session, with a venv at
/opt/cesard holding CONTAINER_REQUIREMENTS, plus the local projects named in
$CESARD_TEST_LOCAL (':'-separated paths, e.g. /work/main) built with
`pip wheel --no-deps`. Override the `container_requirements` /
`container_local` fixtures to change what is installed.

Skipped (with the reason printed) when not root, when $CESARD_TEST_NSPAWN=0,
or when the Debian mirror cannot be reached and no root filesystem is cached.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nspawn  # noqa: E402

CONTAINER_REQUIREMENTS = nspawn.CONTAINER_REQUIREMENTS


@pytest.fixture(scope="session")
def container_requirements() -> list[str]:
    return list(CONTAINER_REQUIREMENTS)


@pytest.fixture(scope="session")
def container_local() -> list[str]:
    return [p for p in os.environ.get("CESARD_TEST_LOCAL", "").split(":") if p]


def _boot(requirements, local, name):
    return nspawn.boot_started(requirements, local, name)


@pytest.fixture(scope="session")
def container(container_requirements, container_local):
    c = _boot(container_requirements, container_local, f"cesard-test-{os.getpid()}")
    try:
        yield c
    finally:
        c.poweroff()
        print(f"\n[nspawn] timings (s): {nspawn.TIMINGS}")


@pytest.fixture(scope="module")
def fresh_container(container_requirements):
    """A container of its own (registry requirements only), for tests that
    put stand-ins where the real cesard would live."""
    c = _boot(container_requirements, [], f"cesard-test-{os.getpid()}-m")
    try:
        yield c
    finally:
        c.poweroff()
        print(f"\n[nspawn] timings (s): {nspawn.TIMINGS}")

"""Files the daemon publishes in ``state/`` for readers beside status.json: each
daemon's own status on a shared spool (``state/hosts/HOST.json``, the same content as
its status.json, which is whichever daemon wrote last), and each member's view of her
queued jobs (``state/owners/UID.json``, :mod:`cesard.owners`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cesard import job as jobmod
from cesard.fsops import read_small

HOSTS = "hosts"


def host_file_name(host: str) -> str:
    """``state/hosts/``'s file for ``host`` (a host id may hold any character but /)."""
    return host.replace("/", "_").lstrip(".") + ".json"


def read_hosts(state_dir: Path) -> list[dict[str, Any]]:
    """Every daemon's own status on this spool, by host (unreadable ones left out)."""
    out = []
    try:
        names = sorted(os.listdir(state_dir / HOSTS))
    except OSError:
        return []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            d = json.loads(read_small(state_dir / HOSTS / name, 1 << 20))
        except (OSError, ValueError, jobmod.JobError):
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


OWNERS = "owners"


def view_path(state_dir: Path, uid: int) -> Path:
    """``state/owners/``'s file for ``uid`` (cesard.owners)."""
    return state_dir / OWNERS / f"{uid}.json"

"""Bearer tokens of cesard-http: ``tokens_file`` holds one client a line,
``NAME SHA256-HEX-OF-TOKEN`` (blank lines and ``#`` comments allowed); the token
itself is never stored. ``cesarctl token add NAME`` makes one, prints it once and
appends its line. The SHA-256 hex is also the key a client checks its callbacks'
signatures with (:mod:`cesard.http.callbacks`): the client can compute it, the
gateway holds nothing more."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")


class TokenFileError(Exception):
    """The tokens file is unreadable or has a bad line (names the file and line)."""


@dataclass(frozen=True)
class Client:
    name: str
    key: str  # sha256 hex of the token: the HMAC key of its callbacks

    @property
    def submitter(self) -> str:
        """job.json ``submitter`` of this client's jobs: how the gateway knows them."""
        return f"http:{self.name}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse(text: str, where: str) -> dict[str, Client]:
    """sha256 hex → client, from the text of a tokens file."""
    out: dict[str, Client] = {}
    names: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not NAME_RE.match(parts[0]) or not HEX_RE.match(parts[1]):
            raise TokenFileError(
                f"{where}:{n}: expected 'NAME SHA256-HEX' (a name of letters, digits, . _ -, "
                "and the 64 hex digits of the token's SHA-256); 'cesarctl token add NAME' "
                "writes such a line")
        if parts[0] in names:
            raise TokenFileError(f"{where}:{n}: client {parts[0]!r} is listed twice")
        names.add(parts[0])
        out[parts[1]] = Client(parts[0], parts[1])
    return out


class Tokens:
    """The clients of a tokens file, read again when the file changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._clients: dict[str, Client] = {}
        self.reload()

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._clients, self._stamp = {}, None
            return
        except OSError as e:
            raise TokenFileError(f"{self.path}: cannot read the tokens file: {e.strerror}") from e
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                text = Path(self.path).read_text()
            except OSError as e:
                raise TokenFileError(f"{self.path}: cannot read the tokens file: "
                                     f"{e.strerror}") from e
            self._clients = parse(text, self.path)
            self._stamp = stamp

    def client(self, bearer: str) -> Client | None:
        """The client whose token is ``bearer`` (compared in constant time), or None."""
        try:
            self.reload()
        except TokenFileError:
            pass  # a file being edited: the clients read before stay
        want = digest(bearer)
        for key, c in self._clients.items():
            if hmac.compare_digest(key, want):
                return c
        return None

    def __len__(self) -> int:
        return len(self._clients)


def add(path: str, name: str) -> str:
    """Make a token for client ``name``, append its line to ``path`` (created 0640) and
    return the token (shown once)."""
    if not NAME_RE.match(name):
        raise TokenFileError(f"{name!r} is not a client name (letters, digits, . _ -; up to "
                             "64)")
    existing = Path(path).read_text() if os.path.exists(path) else ""
    if any(c.name == name for c in parse(existing, path).values()):
        raise TokenFileError(f"{path}: client {name!r} already has a token; remove its line "
                             "first to replace it")
    token = "cesar-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "a") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        f.write(f"{name} {digest(token)}\n")
        f.flush()
        os.fsync(f.fileno())
    return token

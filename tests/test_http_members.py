"""cesard-http on a shared spool in privacy: owner, as it runs from its unit: its own
user (here bob's uid, a member of the spool group), the daemon as another. Its jobs
work through the kernel's ACLs like any member's; a member's job is never visible over
HTTP, even one whose job.json claims the gateway's client."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, fake_script, wait_until
from httpbox import free_port, multipart
from userbox import Box, needs_users, user_box

from cesard.http import tokens

pytestmark = needs_users


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    with user_box("h") as b:
        yield b


def test_the_gateway_as_its_own_user_serves_its_jobs_and_no_members(box: Box) -> None:
    gw_user = box.bob
    home = box.home(gw_user)
    port = free_port()
    tokfile, state = home / "tokens", home / "state"
    token = tokens.add(str(tokfile), "app")
    os.chown(tokfile, gw_user.uid, gw_user.gid)
    conf = home / "cesard.yaml"
    conf.write_text(json.dumps({**box.d.config, "http": {
        "listen": f"127.0.0.1:{port}", "tokens_file": str(tokfile), "state_dir": str(state)}}))
    os.chown(conf, gw_user.uid, gw_user.gid)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    log = open(home / "http.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(BIN / "cesard-http"), "--config", str(conf), "--spool",
                             str(box.d.spool)], user=gw_user.uid, group=gw_user.gid,
                            extra_groups=gw_user.groups, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        import socket

        def up() -> bool:
            assert proc.poll() is None, (home / "http.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(up, 30, "cesard-http to listen")
        import urllib.error
        import urllib.request

        def call(method: str, path: str, body: bytes | None = None,
                 ctype: str | None = None) -> tuple[int, dict[str, object]]:
            h = {"Authorization": f"Bearer {token}"}
            if ctype:
                h["Content-Type"] = ctype
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                         method=method, headers=h)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        body, ctype = multipart({"model": "whisper-1"}, "app.wav", fake_script(text="via http"))
        status, out = call("POST", "/v1/audio/transcriptions", body, ctype)
        assert status == 200 and out["text"] == "via http", (status, out)
        # alice's own job, and one she forged to look like the gateway's client
        mine = box.submit(box.alice, "a.wav", fake_script(text="alice's"))
        box.d.wait_result(mine)
        assert call("GET", f"/v1/jobs/{mine}")[0] == 404
        forged = "20261203T000000.000000Z-forged-1-abcd"
        inc = box.d.spool / "incoming" / forged
        r = box.run(box.alice, [str(BIN / "python"), "-c", (
            "import json, os, sys; p = sys.argv[1]; os.mkdir(p); "
            "open(p + '/a.wav', 'wb').write(b'#cesard-fake\\ntext: forged\\n'); "
            "json.dump({'id': os.path.basename(p), 'submitted_at': "
            "'2026-12-03T00:00:00.000000Z', 'submitter': 'http:app', 'source_name': 'a.wav', "
            "'options': {}}, open(p + '/job.json', 'w'))"), str(inc)])
        assert r.returncode == 0, r.stderr
        box.d.wait_result(forged)
        status, out = call("GET", f"/v1/jobs/{forged}")
        assert status == 404, out
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        Path(home / "http.log").unlink(missing_ok=True)

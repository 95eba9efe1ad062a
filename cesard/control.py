"""Control requests: cancel and retry, checked against their sender, and answered.

A client drops ``control/ACTION.ID.TOKEN.json`` (``{"action", "id", ...}``) like a
job: built in ``tmp/``, published by rename. The sender is the uid that owns the
request file (the kernel's word, like a peer credential); what the file says
about its sender is not read. A request acts only when its sender is the job's
owner, root, or a member of ``admin_group``. Every request is answered in
``control/.reply-NAME`` (``{"ok", "message", ...}``, readable by its sender only
in ``privacy: owner``), then removed; replies older than :data:`REPLY_TTL_S` are
removed by the daemon. A request that goes wrong is that request's failure,
logged and answered: it never stops the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Any

from cesard import job as jobmod
from cesard import privacy
from cesard.dispatch import Dispatcher
from cesard.fsops import write_atomic
from cesard.lifecycle import Lifecycle
from cesard.pool import Pool
from cesard.publish import MAX_REQUEST_BYTES, REPLY_PREFIX, none_to, reply_name
from cesard.settings import Settings
from cesard.spool import Spool, Unclaimable

log = logging.getLogger("cesard")

REPLY_TTL_S = 600.0


class Refused(Exception):
    """The request is not carried out; the message says why and what to do."""


class Denied(Refused):
    """Refused because its sender may not act on that job."""


def read_request(path: Any) -> tuple[dict[str, Any], int]:
    """The request's JSON and its sender's uid (the file's owner), read without
    following links or blocking. Raises Refused when it is not a request."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise Refused(f"cannot open it: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_REQUEST_BYTES:
            raise Refused("not a regular file of at most 4096 bytes")
        data = os.read(fd, MAX_REQUEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        req = json.loads(data)
        if not isinstance(req, dict):
            raise TypeError
        str(req["action"])
        str(req["id"])
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise Refused("malformed: expected JSON with 'action' and 'id'") from e
    return req, st.st_uid


class Control:
    """Carries out control requests: verbs scan and handle. The moves they ask for are
    the lifecycle's; a running job's worker is the pool's."""

    def __init__(self, spool: Spool, settings: Settings, jobs: Lifecycle, pool: Pool,
                 dispatcher: Dispatcher) -> None:
        self.spool = spool
        self.settings = settings
        self.jobs = jobs
        self.pool = pool
        self.dispatcher = dispatcher

    def scan(self, now: float) -> None:
        for name in list(self.spool.scan("control")):
            if name.startswith(REPLY_PREFIX):
                self._expire_reply(name, now)
            else:
                self.handle(name, now)

    def handle(self, name: str, now: float) -> None:
        if name.startswith("."):
            return
        spool = self.spool
        path = spool.dir("control") / name
        shown = jobmod.display_name(name)
        sender: int | None = None
        job_id = ""
        denied = False
        try:
            req, sender = read_request(path)
            action, job_id = str(req["action"]), str(req["id"])
            if not jobmod.valid_id(job_id):  # I7: never a path from a client (../, /)
                raise Refused(f"invalid job id {job_id!r}")
            if action == "cancel":
                message = self._cancel(job_id, sender, now)
            elif action == "retry":
                message = self._retry(job_id, sender, now)
            else:
                raise Refused(f"unknown action {action!r}; known: cancel, retry")
            ok = True
        except Refused as e:
            ok, message, denied = False, str(e), isinstance(e, Denied)
            log.warning("control request %s from %s refused: %s", shown,
                        jobmod.user_name(sender) if sender is not None else "?", message)
        except Exception as e:  # noqa: BLE001 - a request never stops the daemon (I6)
            ok, message = False, f"the daemon could not carry it out: {e}"
            log.exception("job=%s control request %s failed", job_id or "-", shown)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        if sender is not None:
            self._reply(name, sender, {"ok": ok, "id": job_id, "message": message,
                                       "denied": denied})

    # --- answers ------------------------------------------------------------------------

    def _reply(self, name: str, sender: int, data: dict[str, Any]) -> None:
        spool = self.spool
        rname = reply_name(name)
        try:
            write_atomic(spool.dir("control"), rname, json.dumps(data).encode(), mode=0o640,
                         durable=False)
            if spool.guard is not None:
                spool.guard.grant_file(spool.dir("control") / rname, sender)
        except OSError as e:
            log.warning("cannot answer control request %s: %s", jobmod.display_name(name), e)

    def _expire_reply(self, name: str, now: float) -> None:
        path = self.spool.dir("control") / name
        try:
            if time.time() - os.lstat(path).st_mtime > REPLY_TTL_S:  # (file times: wall)
                path.unlink()
        except OSError:
            pass

    # --- who may -------------------------------------------------------------------------

    def _authorize(self, job_id: str, owner: int | None, sender: int, action: str) -> None:
        try:
            admin_gid = privacy.group_id(self.settings.cfg.admin_group)
        except privacy.PrivacyError:
            admin_gid = None
        if self.settings.cfg.privacy == "group" and owner is not None:
            return  # every member may act on every job
        if not privacy.may_act_on(sender, owner, admin_gid):
            raise self._none_to(job_id, action)

    def _none_to(self, job_id: str, action: str) -> Denied:
        return Denied(none_to(job_id, action))

    def _unknown(self, job_id: str, sender: int, action: str, message: str) -> Refused:
        """``message`` for its owner, root or an admin; the answer of :meth:`_none_to`
        for anyone else (a guessed id tells nothing)."""
        for state in ("done", "failed", "processing", "incoming", "deferred"):
            try:
                owner = self._owner_on_disk(state, job_id)
            except FileNotFoundError:
                continue
            try:
                self._authorize(job_id, owner, sender, action)
            except Denied as e:
                return e
            return Refused(message)
        try:
            admin_gid = privacy.group_id(self.settings.cfg.admin_group)
        except privacy.PrivacyError:
            admin_gid = None
        if self.settings.cfg.privacy == "group" or privacy.may_act_on(sender, None, admin_gid):
            return Refused(message)
        return self._none_to(job_id, action)

    def _owner_on_disk(self, state: str, job_id: str) -> int | None:
        path = self.spool.dir(state) / job_id
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            try:
                owner = self.spool.read_meta(path).owner
                return st.st_uid if owner is None else owner
            except jobmod.JobError:
                pass
        return st.st_uid

    # --- cancel -----------------------------------------------------------------------

    def _cancel(self, job_id: str, sender: int, now: float) -> str:
        w = self.pool.holding(job_id)
        if w is not None:
            job = w.jobs[job_id]
            self._authorize(job_id, job.meta.owner, sender, "cancel")
            del w.jobs[job_id]
            if not w.jobs:
                self.pool.kill(w)  # it was the worker's only job: stop the work now
            # else its batch goes on for the others; what the worker still says of
            # this job is ignored
            self.jobs.finish(job, "cancelled", None, None,
                             jobmod.Cancelled("cancelled by request while running"), now)
            return "cancelled while running"
        held = self.dispatcher.held_job(job_id)
        if held is not None:
            self._authorize(job_id, held.meta.owner, sender, "cancel")
            self.dispatcher.cancel_held(job_id)
            self.jobs.finish(held, "cancelled", None, None,
                             jobmod.Cancelled("cancelled by request while waiting"), now)
            return "cancelled while waiting"
        for state in ("incoming", "deferred"):
            try:
                owner = self._owner_on_disk(state, job_id)
            except FileNotFoundError:
                continue
            self._authorize(job_id, owner, sender, "cancel")
            try:
                if self.jobs.cancel_queued(state, job_id, now):
                    return f"cancelled while {state}"
            except Unclaimable as e:
                raise Refused(str(e)) from e
        raise self._unknown(job_id, sender, "cancel",
                            f"job {job_id} is not queued or running (finished already, or "
                            "unknown)")

    # --- retry --------------------------------------------------------------------------

    def _retry(self, job_id: str, sender: int, now: float) -> str:
        src = self.spool.dir("failed") / job_id
        try:
            owner = self._owner_on_disk("failed", job_id)
        except FileNotFoundError:
            raise self._unknown(job_id, sender, "retry",
                                f"job {job_id} is not in failed/; only failed jobs can be "
                                "retried") from None
        if not src.is_dir() or src.is_symlink():
            raise Refused(f"failed/{job_id} is not a job directory")
        self._authorize(job_id, owner, sender, "retry")
        try:
            self.jobs.retry_failed(job_id, now)
        except OSError as e:
            raise Refused(f"cannot take failed/{job_id}: {e.strerror}") from e
        log.info("job=%s queued again by request of %s", job_id, jobmod.user_name(sender))
        return "queued again"

"""``ws/agents/<agent_id>/``: an agent receives its tasks without polling. ``ws/executions/<id>/``: an
execution's state, as it changes (its page follows it)."""

import asyncio
import logging
from contextlib import suppress

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import close_old_connections, connection

from accounts.services import api_key_authenticate
from agents import selectors, services
from agents.api.views import assigned_task
from agents.models import ExecutionStatus
from core.api.permissions import ApiKeyScope
from core.errors import NotFound, ServiceError
from core.sockets import (
    CLOSE_DONE,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    ClientSocket,
    socket_credentials,
)
from jobs import events as job_events
from jobs.consumers import socket_client
from jobs.services import job_requeue

logger = logging.getLogger(__name__)

TASK_ASSIGNED = "task.assigned"


class AgentConsumer(ClientSocket):
    """Pushes each task assigned to the agent as ``{"type": "task.assigned", "task": {...}}`` (a
    poll's task, lease included); results still go to ``POST /tasks/{task_id}/result``. The socket
    waits as a long poll does (``agents.services.agent_poll``, a heartbeat too), on a thread of its
    own, ``WAIT_SECONDS`` at a time. A task taken as the socket closes goes back to the queue.

    An agent key (or an admin key) whose owner registered the agent connects; anything else is
    closed with 4401 (no or bad key), 4403 (another scope) or 4404 (not its agent)."""

    WAIT_SECONDS = 5.0

    pusher: asyncio.Task | None = None

    async def connect(self):
        credentials = socket_credentials(self.scope)
        close_code, agent = await database_sync_to_async(_speaking_agent)(
            raw_key=credentials.raw_key, agent_id=self.scope["url_route"]["kwargs"]["agent_id"]
        )
        await self.accept(credentials.subprotocol)
        if close_code is not None:
            await self.close(code=close_code)
            return
        self.agent = agent
        self.closing = asyncio.Event()
        self.pusher = asyncio.get_running_loop().create_task(self._push_tasks())

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Ended without its disconnect (an error of its own, a cancel): it takes no more tasks,
            # and one taken meanwhile goes back to the queue.
            if self.pusher is not None:
                self.closing.set()

    async def disconnect(self, code):
        if self.pusher is not None:
            self.closing.set()
            await asyncio.wait({self.pusher}, timeout=self.WAIT_SECONDS + 5)

    async def close_for_restart(self) -> None:
        if self.pusher is not None:
            self.closing.set()
        await super().close_for_restart()

    async def _push_tasks(self) -> None:
        poll = sync_to_async(_poll, thread_sensitive=False)
        while not self.closing.is_set():
            try:
                tasks = await poll(agent=self.agent, wait_seconds=self.WAIT_SECONDS)
            except ServiceError:  # banned or gone meanwhile
                await self.close(code=CLOSE_FORBIDDEN)
                return
            except Exception:
                logger.exception("poll for agent %s failed", self.agent.agent_id)
                await asyncio.sleep(1)
                continue
            sent = 0
            try:
                for task in tasks:
                    if self.closing.is_set():
                        break
                    await self.send_json({"type": TASK_ASSIGNED, "task": task})
                    sent += 1
            finally:
                if sent < len(tasks):
                    await database_sync_to_async(_hand_back)(task_ids=[t["task_id"] for t in tasks[sent:]])


def _speaking_agent(*, raw_key: str | None, agent_id: str):
    if raw_key is None:
        return CLOSE_UNAUTHENTICATED, None
    api_key = api_key_authenticate(raw_key=raw_key)
    if api_key is None:
        return CLOSE_UNAUTHENTICATED, None
    if api_key.scope not in (ApiKeyScope.AGENT, ApiKeyScope.ADMIN):
        return CLOSE_FORBIDDEN, None
    try:
        agent = selectors.agent_for_owner(
            owner=api_key.user, agent_id=agent_id, any_owner=api_key.scope == ApiKeyScope.ADMIN
        )
    except NotFound:
        return CLOSE_NOT_FOUND, None
    return None, agent


def _poll(*, agent, wait_seconds: float) -> list[dict]:
    """The agent's next tasks (serialised here, on this thread), as a long poll waits for them."""
    close_old_connections()
    try:
        return [assigned_task(task) for task in services.agent_poll(agent=agent, limit=8, wait_seconds=wait_seconds)]
    finally:
        connection.close()


def _hand_back(*, task_ids: list) -> None:
    for task_id in task_ids:
        with suppress(ServiceError):
            job_requeue(job_id=task_id, reason="The agent's socket closed before the task reached it.")


EXECUTION_STATUS = "execution.status"


class ExecutionConsumer(ClientSocket):
    """``ws/executions/<execution_id>/``: the execution's state (``GET …/executions/{id}/status``'s
    body) as ``{"type": "execution.status", ...}``, on connect and after each change. Each advance
    that changes the execution publishes ``execution.changed`` to its group once it commits; the
    socket reads the execution again and sends it. Once it has ended the socket closes with 1000.

    Credentials as for ``ws/jobs/<id>/``: an API key (client or admin scope), else the session's
    user; the execution's client and admins may follow it. Refusals, sent after accepting: 4401
    no or bad credentials, 4403 another scope, 4404 no such execution, or not yours."""

    finished = False

    async def connect(self):
        job_events.use_server_loop(asyncio.get_running_loop())
        execution_id = self.scope["url_route"]["kwargs"]["execution_id"]
        credentials = socket_credentials(self.scope)
        user = self.scope.get("user")
        if credentials.raw_key is None and not (user and user.is_authenticated):
            await self.refuse(CLOSE_UNAUTHENTICATED, credentials.subprotocol)
            return
        # Joined before reading, so that no change between the two is missed.
        await self.join_group(services.execution_group(execution_id))
        close_code, self.reader = await database_sync_to_async(_execution_reader)(
            execution_id=execution_id, raw_key=credentials.raw_key, user=user
        )
        if close_code is not None:
            await self.leave_group()
            await self.refuse(close_code, credentials.subprotocol)
            return
        await self.accept(credentials.subprotocol)
        await self.execution_changed({})

    async def disconnect(self, code):
        await self.leave_group()

    async def execution_changed(self, event):
        if self.finished:
            return
        state = await database_sync_to_async(self.reader)()
        await self.send_json({"type": EXECUTION_STATUS, **state})
        if state["status"] in ExecutionStatus.TERMINAL:
            self.finished = True
            await self.leave_group()
            await self.close(code=CLOSE_DONE)


def _execution_reader(*, execution_id, raw_key: str | None, user):
    """``(None, read)`` where ``read()`` is the execution's state now, if the caller may follow it;
    else ``(close code, None)``."""
    close_code, user, is_admin = socket_client(raw_key=raw_key, user=user)
    if close_code is not None:
        return close_code, None
    try:
        selectors.execution_for(user=user, execution_id=execution_id, is_admin=is_admin)
    except NotFound:
        return CLOSE_NOT_FOUND, None

    def read() -> dict:
        return selectors.execution_view(
            selectors.execution_for(user=user, execution_id=execution_id, is_admin=is_admin)
        )

    return None, read

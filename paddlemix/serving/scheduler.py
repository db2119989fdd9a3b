"""Request lifecycle and batching (as transformers' continuous_batching ``requests.py`` / ``scheduler.py``).

Every request becomes a ``RequestState``; one worker thread (never the event loop) takes the oldest waiting request
and every waiting request compatible with it (same model and sampling parameters, ``engine.batch_key``) up to
``max_batch_size`` rows, and runs them as ONE batched ``generate`` through the engine. The queue is bounded
(``QueueFull`` -> 429), every request has a deadline (``timeout``), and a batch whose requests are all gone
(timed out, disconnected, shut down) is stopped at its next step.

Events for a request (progress, text deltas, the result or the error) are handed to the event loop that submitted
it with ``call_soon_threadsafe``; the route reads them from ``RequestState.events``.
"""

import asyncio
import enum
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler already holds its maximum of waiting requests."""


class RequestCancelled(Exception):
    """A request was cancelled (the server shuts down) before it finished."""


class RequestTimeout(Exception):
    """A request did not finish within the server's timeout."""


class BatchStopped(Exception):
    """Raised inside a running batch when none of its requests is still wanted."""


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (RequestStatus.FINISHED, RequestStatus.FAILED, RequestStatus.CANCELLED)


@dataclass
class RequestState:
    """One request from submission to its result. ``job`` is the engine's prepared work (``rows``, ``batch_key``)."""

    request_id: str
    job: Any
    loop: asyncio.AbstractEventLoop
    deadline: float
    status: RequestStatus = RequestStatus.WAITING
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    result: Any = None
    error: Optional[BaseException] = None
    created: float = field(default_factory=time.monotonic)

    def emit(self, kind, payload=None):
        """Hand an event to the request's event loop (safe from any thread; dropped once the loop is closed)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:
            pass

    @property
    def done(self):
        return self.status in FINAL


class BatchContext:
    """What the engine sees of a running batch: per-job events and whether to stop."""

    def __init__(self, scheduler, states):
        self._scheduler = scheduler
        self.states = states

    def progress(self, index, done, total):
        self.states[index].emit("progress", (done, total))

    def delta(self, index, text):
        self.states[index].emit("delta", text)

    def finish(self, index, result):
        """Finish one job before the batch ends (its row is complete)."""
        self._scheduler._finish(self.states[index], result)

    def check(self):
        """Raise ``BatchStopped`` when no request of the batch is still wanted."""
        self._scheduler._expire()
        if all(s.done for s in self.states) or self._scheduler._stopping_now:
            raise BatchStopped()


class Scheduler:
    """Batches compatible requests onto one worker thread running ``engine.run(jobs, context)``.

    max_batch_size: most rows (images / answers) in one batch; max_queue: most waiting requests; timeout: seconds
    from submission to result; batch_wait: an idle worker that gets a request waits until no other one arrived
    for this many seconds (at most 20 times as long) so that requests sent together share its batch (requests
    that arrive while a batch runs wait for the next one anyway).
    """

    def __init__(self, engine, max_batch_size=8, max_queue=64, timeout=600.0, batch_wait=0.05):
        if max_batch_size < 1 or max_queue < 1 or timeout <= 0 or batch_wait < 0:
            raise ValueError("max_batch_size and max_queue must be positive, timeout > 0 and batch_wait >= 0")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.timeout = timeout
        self.batch_wait = batch_wait
        self._waiting = []
        self._running = []
        self._cond = threading.Condition()
        self._thread = None
        self._stopping = False
        self._stopping_now = False
        self._ids = itertools.count()
        self.stats = {"requests": 0, "batches": 0, "rows": 0, "finished": 0, "failed": 0, "cancelled": 0}

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._work, name="paddlemix-scheduler", daemon=True)
        self._thread.start()

    def shutdown(self, cancel_running=True, wait=30.0):
        """Cancel waiting requests; stop (or finish) the running batch; join the worker."""
        with self._cond:
            self._stopping = True
            self._stopping_now = cancel_running
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for state in waiting:
            self._fail(state, RequestCancelled("the server is shutting down"), RequestStatus.CANCELLED)
        if self._thread is not None:
            self._thread.join(wait)

    # ---- requests --------------------------------------------------------------------------------------------

    def submit(self, job, loop=None):
        """A new ``RequestState`` for a prepared job, queued; raises ``QueueFull`` (or RequestCancelled when
        stopping)."""
        if job.rows > self.max_batch_size:
            raise ValueError(f"the request needs {job.rows} rows but --max_batch_size is {self.max_batch_size}")
        state = RequestState(
            request_id=f"req-{next(self._ids)}",
            job=job,
            loop=loop or asyncio.get_running_loop(),
            deadline=time.monotonic() + self.timeout,
        )
        with self._cond:
            if self._stopping:
                raise RequestCancelled("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server queue is full ({self.max_queue} waiting requests); retry later")
            self._waiting.append(state)
            self.stats["requests"] += 1
            self._cond.notify_all()
        return state

    def cancel(self, state):
        """The client is gone: drop the request (a running batch stops once none of its requests is wanted)."""
        with self._cond:
            if state in self._waiting:
                self._waiting.remove(state)
        if not state.done:
            self._fail(state, RequestCancelled("cancelled by the client"), RequestStatus.CANCELLED)

    def expire(self, state):
        """The request's deadline passed: drop it with a timeout error (a running batch goes on for the others)."""
        with self._cond:
            if state in self._waiting:
                self._waiting.remove(state)
        self._fail(state, RequestTimeout(f"the request did not finish within {self.timeout:g} s"),
                   RequestStatus.FAILED)

    def snapshot(self):
        with self._cond:
            return dict(self.stats, waiting=len(self._waiting), running=len(self._running),
                        max_batch_size=self.max_batch_size, max_queue=self.max_queue)

    # ---- the worker ------------------------------------------------------------------------------------------

    def schedule_batch(self, budget):
        """Take the oldest waiting request and the compatible ones after it, up to ``budget`` rows (under the lock)."""
        if not self._waiting:
            return []
        first = self._waiting[0]
        batch, rows = [first], first.job.rows
        for state in self._waiting[1:]:
            job = state.job
            if job.batch_key == first.job.batch_key and rows + job.rows <= budget and \
                    self.engine.fits([s.job for s in batch] + [job]):
                batch.append(state)
                rows += job.rows
        for state in batch:
            self._waiting.remove(state)
            state.status = RequestStatus.RUNNING
        return batch

    def _work(self):
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait(timeout=1.0)
                    self._expire_locked()
                if self._stopping:
                    return
                # the worker was idle: collect the burst of requests sent together (until none arrived for
                # batch_wait seconds, at most 20 x batch_wait) so that they share this batch
                limit, seen = time.monotonic() + 20 * self.batch_wait, -1
                while self._waiting_rows() < self.max_batch_size and not self._stopping and \
                        len(self._waiting) != seen and time.monotonic() < limit:
                    seen = len(self._waiting)
                    self._cond.wait(min(self.batch_wait, max(limit - time.monotonic(), 0.0)))
                self._expire_locked()
                batch = self.schedule_batch(self.max_batch_size)
                if not batch:
                    continue
                self._running = batch
                self.stats["batches"] += 1
                self.stats["rows"] += sum(s.job.rows for s in batch)
            self._run(batch)
            with self._cond:
                self._running = []

    def _waiting_rows(self):
        return sum(s.job.rows for s in self._waiting)

    def _run(self, batch):
        context = BatchContext(self, batch)
        try:
            results = self.engine.run([s.job for s in batch], context)
        except BatchStopped:
            for state in batch:
                if not state.done:
                    self._fail(state, RequestCancelled("the server is shutting down"), RequestStatus.CANCELLED)
            return
        except Exception as exc:  # the engine failed on this batch: its requests fail, the server goes on
            logger.exception("batch of %d request(s) failed", len(batch))
            for state in batch:
                if not state.done:
                    self._fail(state, exc, RequestStatus.FAILED)
            return
        for state, result in zip(batch, results):
            if isinstance(result, Exception):
                self._fail(state, result, RequestStatus.FAILED)
            else:
                self._finish(state, result)

    def _expire(self):
        with self._cond:
            self._expire_locked()

    def _expire_locked(self):
        now = time.monotonic()
        for state in list(self._waiting) + list(self._running):
            if not state.done and now > state.deadline:
                if state in self._waiting:
                    self._waiting.remove(state)
                self._fail(state, RequestTimeout(f"the request did not finish within {self.timeout:g} s"),
                           RequestStatus.FAILED)

    def _finish(self, state, result):
        with self._cond:
            if state.done:
                return
            state.status = RequestStatus.FINISHED
            state.result = result
            self.stats["finished"] += 1
        state.emit("result", result)

    def _fail(self, state, error, status):
        with self._cond:
            if state.done:
                return
            state.status = status
            state.error = error
            self.stats["cancelled" if status is RequestStatus.CANCELLED else "failed"] += 1
        state.emit("error", error)

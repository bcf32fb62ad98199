"""The chaos suite's open-loop load generator: asyncio on one thread, keep-alive HTTP/1.1
connections to both coordinators, so that one Python process can hold hundreds to thousands of
requests per second while the cluster under test shares the machine.

Request i is due at start + i/rate whatever earlier requests are doing (open loop: a stalled
cluster does not slow the load down). Requests alternate between the coordinators and cycle
through the sample ensembles, each with its own OIP `id`. Only a failed connection (refused,
reset, closed before the answer) moves a request, once, to the other coordinator; a reused
keep-alive connection that turns out closed is first redialled to the same coordinator, since
that is the client's housekeeping, not a fault. Timeouts and HTTP errors are not retried.

With a `Client` made from a CA file and an API key file (the secure compose overlay), every
connection is TLS, verified against that CA (the coordinators' certificate names 127.0.0.1), and
every request carries `Authorization: Bearer <secret>`. A TLS handshake costs this one Python
thread far more than a TCP connect, so with TLS the pools behave like a real client's (aiohttp's
connector, say): they open WARM_CONNECTIONS per coordinator before the load starts; a request
with no idle connection waits for the next one that comes free, from a finished request or a
finished handshake; at most OPEN_AT_ONCE handshakes per coordinator run at a time; and a
handshake whose request timed out meanwhile still completes, for the next request. Without that,
a burst of slow answers made the generator open thousands of connections, abandon their
handshakes at the timeout and open more, until it sent nothing at all while the coordinators sat
idle (a client-side spiral, not the cluster's).

Standard library only; every address is 127.0.0.1.
"""

import asyncio
import collections
import json
import ssl
import threading
import time
from dataclasses import dataclass

ENSEMBLES = ("digits_soft", "digits_hard", "digits_fusion")

# Connections per coordinator, at most: beyond this a due request waits for a free one (its
# wait counts against its timeout), so that an overloaded cluster cannot make the client open
# sockets without bound.
MAX_CONNECTIONS = 2048
# With TLS only (see the module doc): connections opened per coordinator before the load starts,
# and handshakes in progress per coordinator at most.
WARM_CONNECTIONS = 32
OPEN_AT_ONCE = 32


def now():
    return time.monotonic()


@dataclass(slots=True)
class Record:
    """One request of the load: when it was due, where it went and how it ended."""

    t_sched: float
    coord: int  # index of the coordinator it was sent to first
    model: str
    rid: str  # the request's OIP `id`, which the coordinators log as request_id
    outcome: str = "pending"  # ok | degraded | failed | lost
    retried: bool = False
    conn_failed_at: float | None = None
    t_done: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Client:
    """How to reach the coordinators' REST ports: plain, or TLS trusting a CA, with or without
    an API key."""

    ssl_context: ssl.SSLContext | None = None
    api_key: str | None = None

    @classmethod
    def from_files(cls, cafile="", api_key_file=""):
        ctx = ssl.create_default_context(cafile=cafile) if cafile else None
        key = None
        if api_key_file:
            with open(api_key_file) as f:
                key = f.read().strip()
        return cls(ctx, key)

    @property
    def scheme(self):
        return "https" if self.ssl_context else "http"

    def headers(self):
        """Extra request header lines, each ending in CRLF."""
        return f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else ""


class ConnectionLost(Exception):
    """The connection failed before a whole answer arrived."""


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        # Has sat idle in a pool (after a request, or opened ahead of one), so it may have gone
        # stale: the coordinators close keep-alive connections idle for 10 s.
        self.used = False

    @classmethod
    async def open(cls, port, client):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client.ssl_context)
        except OSError as e:  # ssl.SSLError is one too: a failed handshake is a failed connection
            raise ConnectionLost(f"connect: {e}") from e
        return cls(reader, writer)

    def close(self):
        self.writer.close()

    async def post(self, head, body):
        """Sends one request; returns (status, body, keep_alive). Raises ConnectionLost if the
        connection fails before the whole answer is in."""
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            header = await self.reader.readuntil(b"\r\n\r\n")
            lines = header.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, keep_alive = 0, True
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
            answer = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                IndexError) as e:
            raise ConnectionLost(f"{type(e).__name__}: {e}") from e
        self.used = True
        return status, answer, keep_alive


class Pool:
    """Idle keep-alive connections to one coordinator.

    Plain HTTP: a request without an idle connection dials its own. TLS (see the module doc): it
    waits for the next connection that comes free, whether a request finished with it or a
    handshake completed, and handshakes are started for waiters, at most OPEN_AT_ONCE at a time;
    one that fails (the coordinator is down) fails the longest waiter, which then moves to the
    other coordinator as a failed connection does."""

    def __init__(self, port, client):
        self.port = port
        self.client = client
        self.idle = []
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.tls = client.ssl_context is not None
        self.waiters = collections.deque()  # futures of requests waiting for a connection
        self.handshakes = 0  # in progress
        self.closed = False

    def _release(self, conn):
        """A connection fit for a request: to the longest waiter, else to the idle ones."""
        if self.closed:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def _handshake(self):
        self.handshakes += 1
        task = asyncio.ensure_future(Connection.open(self.port, self.client))
        task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task):
        self.handshakes -= 1
        error = task.exception() if not task.cancelled() else ConnectionLost("handshake cancelled")
        if error is None:
            conn = task.result()
            conn.used = True  # it may wait in the idle list long enough to go stale
            self._release(conn)
        else:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                    break
        self._top_up()

    def _top_up(self):
        pending = sum(1 for w in self.waiters if not w.done())
        while not self.closed and self.handshakes < min(OPEN_AT_ONCE, pending):
            self._handshake()

    async def _acquire(self):
        if self.idle:
            return self.idle.pop()
        if not self.tls:
            return await Connection.open(self.port, self.client)
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self._top_up()
        try:
            return await waiter
        except asyncio.CancelledError:
            # Timed out while waiting; a connection handed over meanwhile goes to the next.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            raise

    async def warm(self):
        """With TLS: WARM_CONNECTIONS idle connections before the load starts (those that
        fail are simply not there; the load dials again)."""
        if not self.tls:
            return
        results = await asyncio.gather(
            *(Connection.open(self.port, self.client) for _ in range(WARM_CONNECTIONS)),
            return_exceptions=True)
        for conn in results:
            if isinstance(conn, Connection):
                conn.used = True
                self.idle.append(conn)

    async def post(self, head, body):
        """One request on an idle connection (or a new one); a reused connection that fails is
        redialled once. Returns (status, body); raises ConnectionLost."""
        async with self.slots:
            conn = await self._acquire()
            try:
                status, answer, keep_alive = await conn.post(head, body)
            except ConnectionLost:
                conn.close()
                if not conn.used:
                    raise
                conn = await Connection.open(self.port, self.client)
                try:
                    status, answer, keep_alive = await conn.post(head, body)
                except ConnectionLost:
                    conn.close()
                    raise
            except BaseException:  # a timeout or cancellation: the connection is mid-request
                conn.close()
                raise
            if keep_alive:
                self._release(conn)
            else:
                conn.close()
            return status, answer

    def close(self):
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class RequestTemplate:
    """The request body with a slot for its `id`, encoded once: the generator's time goes to
    sending, not to JSON."""

    SLOT = "\u0000id\u0000"

    def __init__(self, body, client):
        self.extra = client.headers()
        request = json.loads(body)
        encoded = json.dumps({**request, "id": self.SLOT}).encode()
        marker = json.dumps(self.SLOT).encode()
        self.prefix, _, self.suffix = encoded.partition(marker)

    def framed(self, port, model, rid):
        """(head, body) of one POST; `rid` must be plain ASCII with no quotes."""
        body = b"%s\"%s\"%s" % (self.prefix, rid.encode(), self.suffix)
        head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\n{self.extra}Content-Length: {len(body)}\r\n\r\n").encode()
        return head, body


class LoadGenerator:
    """Open-loop load on its own thread and event loop; see the module doc."""

    def __init__(self, ports, rate, body, timeout_s=5.0, client=Client()):
        self.ports = ports
        self.client = client
        self.rate = rate
        self.template = RequestTemplate(body, client)
        self.timeout_s = timeout_s
        self.records = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.stopping = None  # an asyncio.Event, made on the loop
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.started = threading.Event()
        # The scheduler's worst lag behind the due times, in seconds: when it grows, the
        # generator (not the cluster) is the bottleneck.
        self.max_lag_s = 0.0

    def start(self):
        self.thread.start()
        self.started.wait()

    def stop(self):
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self):
        self.stopping = asyncio.Event()
        pools = [Pool(p, self.client) for p in self.ports]
        await asyncio.gather(*(pool.warm() for pool in pools))
        tasks = set()
        self.started.set()
        start = now()
        i = 0
        while not self.stopping.is_set():
            # Every request due by now goes out; then sleep until the next one is due.
            t = now()
            while start + i / self.rate <= t:
                due = start + i / self.rate
                self.max_lag_s = max(self.max_lag_s, t - due)
                rec = Record(t_sched=due, coord=i % 2, model=ENSEMBLES[(i // 2) % len(ENSEMBLES)],
                             rid=f"chaos-{i}")
                with self.lock:
                    self.records.append(rec)
                task = asyncio.create_task(self._send(pools, rec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(max(0.0, start + i / self.rate - now()))
        if tasks:
            await asyncio.wait(tasks)
        for pool in pools:
            pool.close()

    async def _attempt(self, pools, rec):
        pool = pools[rec.coord]
        try:
            return await pool.post(*self.template.framed(pool.port, rec.model, rec.rid))
        except ConnectionLost as e:
            rec.conn_failed_at = now()
            rec.retried = True
            rec.detail = f"retried after {e}"
            other = pools[1 - rec.coord]
            return await other.post(*self.template.framed(other.port, rec.model, rec.rid))

    async def _send(self, pools, rec):
        try:
            async with asyncio.timeout(self.timeout_s):
                status, body = await self._attempt(pools, rec)
        except (TimeoutError, ConnectionLost) as e:  # no answer, or both coordinators failed
            rec.outcome = "lost"
            rec.detail = f"{rec.detail}; {type(e).__name__}: {e}".lstrip("; ")
        else:
            if status == 200:
                degraded = b'"degraded"' in body and json.loads(body).get("parameters", {}).get("degraded")
                rec.outcome = "degraded" if degraded else "ok"
            else:
                rec.outcome = "failed"
                rec.detail = f"{rec.detail}; HTTP {status}: {body[:200]!r}".lstrip("; ")
        rec.t_done = now()

    def window(self, t0, t1, settle_s=None):
        """The records due in [t0, t1), once each has finished (or `settle_s` has passed)."""
        deadline = now() + (settle_s if settle_s is not None else self.timeout_s * 2 + 1)
        with self.lock:
            recs = [r for r in self.records if t0 <= r.t_sched < t1]
        while any(r.t_done is None for r in recs) and now() < deadline:
            time.sleep(0.05)
        return recs

    def in_flight_at(self, t):
        with self.lock:
            return sum(1 for r in self.records if r.t_sched <= t and (r.t_done is None or r.t_done > t))


def measure_capacity(ports, body, seconds=8.0, concurrency=128, client=Client()):
    """Closed loop through both coordinators with `concurrency` requests always outstanding:
    answers per second over `seconds` (after a 2 s warm-up), and the error count. What the
    cluster (plus this client) can sustain on this machine."""
    template = RequestTemplate(body, client)

    async def run():
        pools = [Pool(p, client) for p in ports]
        counts = {"ok": 0, "errors": 0}
        measuring = False
        stop_at = now() + 2.0 + seconds

        async def caller(k):
            i = k
            while now() < stop_at:
                pool = pools[i % 2]
                model = ENSEMBLES[(i // 2) % len(ENSEMBLES)]
                try:
                    async with asyncio.timeout(5.0):
                        status, _ = await pool.post(*template.framed(pool.port, model, f"capacity-{i}"))
                    ok = status == 200
                except (TimeoutError, ConnectionLost):
                    ok = False
                if measuring:
                    counts["ok" if ok else "errors"] += 1
                i += concurrency

        async def clock():
            nonlocal measuring
            await asyncio.sleep(2.0)
            measuring = True
            await asyncio.sleep(seconds)
            measuring = False

        await asyncio.gather(clock(), *(caller(k) for k in range(concurrency)))
        for pool in pools:
            pool.close()
        return counts["ok"] / seconds, counts["errors"]

    return asyncio.run(run())

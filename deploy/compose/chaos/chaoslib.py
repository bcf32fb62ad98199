"""The chaos suite's tools: a handle on the compose cluster and the counting helpers (the load
generator is loadgen.py).

Standard library only. Every address it sends to is 127.0.0.1: the coordinators' published
admin ports (/v2/health/ready, /chorus/workers; plain HTTP without a key, also when the secure
overlay puts TLS and API keys on the public ports); the cluster itself is reached through the
docker CLI.
"""

import http.client
import json
import shlex
import subprocess
import time

from loadgen import now

WORKERS = ("worker-1", "worker-2", "worker-3", "worker-4")
ETCD = ("etcd-1", "etcd-2", "etcd-3")


def wait_until(predicate, timeout_s, interval_s=0.1, since=None):
    """Polls `predicate` until it is true; returns the seconds from `since` (default: the call)
    to the first poll that saw it true, or None on timeout."""
    start = now()
    since = start if since is None else since
    while True:
        try:
            if predicate():
                return now() - since
        except Exception:  # a probe that cannot answer yet counts as "not yet"
            pass
        if now() - start >= timeout_s:
            return None
        time.sleep(interval_s)


def routing_delta(before, after):
    """The routing counters added between two `Cluster.routing_totals` snapshots, summed over the
    coordinators. A coordinator that restarted in between (a counter went down) counts from its
    restart; one that did not answer either time counts nothing."""
    total = {}
    for port, a in after.items():
        b = before.get(port) or {}
        if not a:
            continue
        restarted = any(a.get(k, 0) < b.get(k, 0) for k in a)
        for k, v in a.items():
            total[k] = total.get(k, 0) + (v if restarted else v - b.get(k, 0))
    return total


def tally(recs):
    counts = {"sent": len(recs), "ok": 0, "degraded": 0, "failed": 0, "lost": 0, "retried": 0}
    for r in recs:
        if r.outcome in counts:
            counts[r.outcome] += 1
        else:  # still pending after the settle time: no answer
            counts["lost"] += 1
        counts["retried"] += r.retried
    return counts


class Cluster:
    """The compose project under test, driven through the docker and compose CLIs."""

    def __init__(self, compose_cmd, project, compose_files, admin_ports):
        """`admin_ports`: the coordinators' published admin ports, coordinator-1's first; every
        method below that takes a `port` means one of them."""
        self.compose_cmd = shlex.split(compose_cmd) + ["--project-name", project]
        for f in compose_files:
            self.compose_cmd += ["--file", f]
        self.project = project
        self.ports = admin_ports
        self._ids = {}

    def run(self, args, timeout_s=60, check=True):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def compose(self, *args, timeout_s=300):
        return self.run(self.compose_cmd + list(args), timeout_s=timeout_s)

    def docker(self, *args, timeout_s=60, check=True):
        return self.run(["docker", *args], timeout_s=timeout_s, check=check)

    def freeze(self, cid, attempts=3):
        """Stops every process of a container where it stands, as `docker pause` does; returns how
        ("pause" or "SIGSTOP"), for `thaw`. The cgroup freezer can refuse ("unable to freeze")
        while a process sits in an uninterruptible wait, which a loaded machine makes likelier:
        retried, then the container's only process (the chorus binary is its PID 1, with no
        handlers for SIGSTOP, which no process can catch) is stopped with a signal instead, which
        is the same fault to the rest of the cluster."""
        for attempt in range(attempts):
            try:
                self.docker("pause", cid)
                return "pause"
            except RuntimeError as e:
                print(f"chaos: docker pause refused (attempt {attempt + 1} of {attempts}): {e}", flush=True)
                time.sleep(0.2)
        self.docker("kill", "--signal", "SIGSTOP", cid)
        return "SIGSTOP"

    def thaw(self, cid, how):
        if how == "pause":
            self.docker("unpause", cid)
        else:
            self.docker("kill", "--signal", "SIGCONT", cid)

    def container(self, service):
        """The container id of a service (it survives docker stop/start)."""
        if service not in self._ids:
            cid = self.compose("ps", "-q", service)
            if not cid:
                raise RuntimeError(f"service {service} has no container")
            self._ids[service] = cid.splitlines()[0]
        return self._ids[service]

    def network(self, name):
        nets = self.docker(
            "network", "ls", "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.network={name}",
        )
        if not nets:
            raise RuntimeError(f"network {name} of project {self.project} not found")
        return nets.splitlines()[0]

    # --- coordinators -------------------------------------------------------------------------
    def _get(self, port, path, timeout_s=1.0):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ready(self, port):
        try:
            return self._get(port, "/v2/health/ready")[0] == 200
        except OSError:
            return False

    def workers(self, port):
        """worker_id -> status as coordinator `port` sees it, or None if it does not answer."""
        try:
            status, body = self._get(port, "/chorus/workers")
        except (OSError, http.client.HTTPException):
            return None
        if status != 200:
            return None
        return {w["worker_id"]: w for w in json.loads(body)["workers"]}

    def routing(self, port):
        """The routing counters of coordinator `port` (retries, retries_refused, hedges,
        hedges_refused, hedges_won since it started), or None if it does not answer."""
        try:
            status, body = self._get(port, "/chorus/workers")
        except (OSError, http.client.HTTPException):
            return None
        return json.loads(body).get("routing") if status == 200 else None

    def routing_totals(self):
        """The routing counters of every coordinator, by port."""
        return {p: self.routing(p) for p in self.ports}

    def views(self, ports=None):
        return [self.workers(p) for p in (ports or self.ports)]

    def out_of_rotation(self, worker, ports=None):
        """No coordinator would route to `worker` (gone from its view, or not routable)."""
        views = self.views(ports)
        return all(v is not None and not v.get(worker, {}).get("routable", False) for v in views)

    def in_rotation(self, worker, ports=None):
        views = self.views(ports)
        return all(v is not None and v.get(worker, {}).get("routable", False) for v in views)

    def completed(self, worker, ports=None):
        return sum((v or {}).get(worker, {}).get("completed", 0) for v in self.views(ports))

    def serving_again(self, worker, timeout_s, since, ports=None):
        """Seconds from `since` until `worker` is in rotation everywhere and has answered a call
        after that."""
        if wait_until(lambda: self.in_rotation(worker, ports), timeout_s) is None:
            return None
        base = self.completed(worker, ports)
        left = max(1.0, timeout_s - (now() - since))
        return wait_until(lambda: self.completed(worker, ports) > base, left, since=since)

    def steady(self, ports=None):
        return all(self.ready(p) for p in (ports or self.ports)) and all(
            self.in_rotation(w, ports) for w in WORKERS
        )

    # --- etcd ---------------------------------------------------------------------------------
    def etcdctl(self, *args, via=None, timeout_s=10):
        """etcdctl run inside a running etcd container (the first that answers)."""
        last = None
        for member in [via] if via else ETCD:
            try:
                return self.docker(
                    "exec", self.container(member), "etcdctl", "--command-timeout=3s",
                    "--endpoints=http://etcd-1:2379,http://etcd-2:2379,http://etcd-3:2379",
                    *args, timeout_s=timeout_s,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = e
        raise RuntimeError(f"no etcd member answered: {last}")

    def _local_etcdctl(self, member, *args, timeout_s=10):
        return self.docker(
            "exec", self.container(member), "etcdctl", "--command-timeout=2s",
            "--endpoints=http://127.0.0.1:2379", *args, check=False, timeout_s=timeout_s,
        )

    def etcd_leader(self, member):
        """The name of the leader as etcd member `member` sees it, or None without a leader."""
        status = json.loads(self._local_etcdctl(member, "endpoint", "status", "-w", "json"))
        leader = status[0]["Status"]["leader"]
        members = json.loads(self._local_etcdctl(member, "member", "list", "-w", "json"))["members"]
        return next((m["name"] for m in members if m["ID"] == leader), None) if leader else None

    def etcd_healthy(self, member):
        # etcdctl 3.4 prints the plain-text health verdict on stderr; the JSON goes to stdout.
        out = self._local_etcdctl(member, "endpoint", "health", "-w", "json")
        return bool(out) and all(e.get("health") for e in json.loads(out))

    def worker_lease(self, worker):
        """The lease id of `worker`'s registration key, or None when it is not registered."""
        out = self.etcdctl("get", f"/chorus/v1/workers/{worker}", "-w", "json")
        kvs = json.loads(out).get("kvs") or []
        return kvs[0].get("lease") if kvs else None

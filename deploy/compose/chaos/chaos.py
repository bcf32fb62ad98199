#!/usr/bin/env python3
"""Chaos suite on the compose cluster: under steady open-loop load through both coordinators,
inject one fault at a time, measure, heal, and judge; every scenario at each of the chosen loads.
deploy/compose/chaos.sh brings the cluster up, runs this, and removes the cluster whatever
happens.

Loads: light (30 requests/s), real (500 requests/s, or a quarter of the measured throughput if
that is higher) and near (the measured capacity). Capacity is measured when a load needs it, and
printed: first the throughput, closed loop; then, for near, the highest open-loop rate at which
the cluster still answers every request whole and on time with no fault (a step of the
throughput, see `deadline_capacity`), as Triton's perf_analyzer finds the highest load under a
latency threshold. The pass criteria are the same at every load: 0 failed, 0 lost, and a faulty
worker out of rotation within 3 s.

Per scenario it prints requests sent, ok, degraded (answered, but not by every member), failed
(an HTTP error), lost (no answer even after the retry), the requests the load generator retried
on the other coordinator, time to detect and time to recover, the coordinators' hedges, and
whether the pass criteria held.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

from chaoslib import WORKERS, Cluster, routing_delta, tally, wait_until
from loadgen import Client, LoadGenerator, measure_capacity, now

PRE_S = 2.0  # steady load before each fault
HOLD_S = 4.0  # load with the fault in place, after it was detected
POST_S = 3.0  # load after recovery
EJECT_LIMIT_S = 3.0  # a faulty worker must be out of rotation within this, at every load
LIGHT_RATE = 30.0
REAL_RATE = 500.0
# The steps of the closed-loop throughput tried, highest first, for the near load, and what a
# step must show over its probe to count as within capacity: no request failed, lost or
# degraded, and a p99 latency of at most a quarter of the ensembles' 1 s deadline (latency that
# grows past that is a queue building up, not a rate the cluster holds).
NEAR_STEPS = (0.8, 0.7, 0.6, 0.5, 0.4)
PROBE_S = 6.0
PROBE_P99_LIMIT_S = 0.25


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def secs(x):
    return "-" if x is None else f"{x:.2f} s"


# Each scenario injects its fault, waits for detection, holds, heals, waits for recovery, and
# returns what it measured. `judge` turns the counts and measurements into (passed, criteria).


def worker_kill(c, load, cfg):
    w = "worker-2"
    cid = c.container(w)
    t_fault = now()
    c.docker("kill", cid)
    detect = wait_until(lambda: c.out_of_rotation(w), 30, since=t_fault)
    time.sleep(HOLD_S)
    t_heal = now()
    c.docker("start", cid)
    return {"fault": f"docker kill {w}", "detect": detect, "t_fault": t_fault, "t_heal": t_heal,
            "recover": c.serving_again(w, 60, since=t_heal)}


def judge_zero(m, counts, recs):
    ok = counts["failed"] == 0 and counts["lost"] == 0 and m["detect"] is not None and m["recover"] is not None
    return ok, "0 failed, 0 lost, detected and recovered"


def judge_ejection(m, counts, recs):
    """A worker fault: 0 failed, 0 lost, out of rotation within the limit, back afterwards."""
    ok, criteria = judge_zero(m, counts, recs)
    ejected = m["detect"] is not None and m["detect"] < EJECT_LIMIT_S
    return ok and ejected, f"{criteria}; out of rotation within {EJECT_LIMIT_S:g} s: {ejected}"


def worker_pause(c, load, cfg):
    w = "worker-3"
    pause_s = cfg.ttl + 3
    cid = c.container(w)
    lease_before = c.worker_lease(w)
    t_fault = now()
    how = c.freeze(cid)
    in_flight = load.in_flight_at(t_fault)
    detect = wait_until(lambda: c.out_of_rotation(w), pause_s, since=t_fault)
    lease_gone = wait_until(lambda: c.worker_lease(w) is None, max(0.5, t_fault + pause_s - now()),
                            since=t_fault)
    time.sleep(max(0.0, t_fault + pause_s - now()))
    t_heal = now()
    c.thaw(cid, how)
    recover = c.serving_again(w, 60, since=t_heal)
    lease_after = c.worker_lease(w)
    return {"fault": f"docker {'pause' if how == 'pause' else 'kill --signal SIGSTOP'} {w} for {pause_s} s "
                     f"(lease TTL {cfg.ttl} s)", "detect": detect,
            "t_fault": t_fault, "t_heal": t_heal, "recover": recover, "in_flight_at_fault": in_flight,
            "lease_expired_after": lease_gone,
            "re_registered": lease_after is not None and lease_after != lease_before}


def judge_pause(m, counts, recs):
    ok, criteria = judge_ejection(m, counts, recs)
    return ok and m["re_registered"], (f"{criteria}; re-registered under a new lease: "
                                       f"{m['re_registered']} ({m['in_flight_at_fault']} requests "
                                       f"in flight at the pause)")


def gray_failure(c, load, cfg):
    w = "worker-4"
    cid = c.container(w)
    net = c.network("data")
    lease_before = c.worker_lease(w)
    t_fault = now()
    c.docker("network", "disconnect", net, cid)
    detect = wait_until(lambda: c.out_of_rotation(w), 15, interval_s=0.05, since=t_fault)
    # A gray failure: etcd still has the worker under the same lease; only the data path is cut.
    still_registered = lease_before is not None and c.worker_lease(w) == lease_before
    time.sleep(HOLD_S)
    t_heal = now()
    c.docker("network", "connect", "--alias", f"{w}.data", "--alias", w, net, cid)
    return {"fault": f"docker network disconnect data {w} (it still reaches etcd)", "detect": detect,
            "t_fault": t_fault, "t_heal": t_heal, "recover": c.serving_again(w, 60, since=t_heal),
            "still_registered": still_registered}


def judge_gray(m, counts, recs):
    ok, criteria = judge_ejection(m, counts, recs)
    if m["detect"] is not None:
        # Where failures fell, for the report: before the ejection is what the data plane's
        # detection costs; after it is what routing around an ejected worker costs.
        ejected_at = m["t_fault"] + m["detect"]
        bad = [r for r in recs if r.outcome in ("failed", "lost")]
        m["failed_before_ejection"] = sum(r.t_sched < ejected_at for r in bad)
        m["failed_while_ejected"] = sum(ejected_at <= r.t_sched < m["t_heal"] for r in bad)
        m["failed_after_reconnect"] = sum(r.t_sched >= m["t_heal"] for r in bad)
    return ok and m["still_registered"], (f"{criteria}; still registered in etcd while cut off: "
                                          f"{m['still_registered']}")


def etcd_leader_kill(c, load, cfg):
    leader = c.etcd_leader("etcd-1") or c.etcd_leader("etcd-2")
    survivor = next(e for e in ("etcd-1", "etcd-2", "etcd-3") if e != leader)
    leases = {w: c.worker_lease(w) for w in WORKERS}
    cid = c.container(leader)
    t_fault = now()
    c.docker("kill", cid)
    detect = wait_until(lambda: c.etcd_leader(survivor) not in (None, leader), 30, since=t_fault)
    new_leader = c.etcd_leader(survivor)
    time.sleep(HOLD_S)
    t_heal = now()
    c.docker("start", cid)
    recover = wait_until(lambda: c.etcd_healthy(leader) and all(c.in_rotation(w) for w in WORKERS), 60,
                         since=t_heal)
    kept = sum(c.worker_lease(w) == leases[w] for w in WORKERS)
    return {"fault": f"docker kill {leader} (the leader; {new_leader} took over)", "detect": detect,
            "t_fault": t_fault, "t_heal": t_heal, "recover": recover, "leases_kept": f"{kept}/{len(WORKERS)}"}


def coordinator_kill(c, load, cfg):
    port = cfg.admin_ports[0]  # coordinator-1's readiness, on its admin port
    cid = c.container("coordinator-1")
    t_fault = now()
    c.docker("kill", cid)
    in_flight = load.in_flight_at(t_fault)
    detect = wait_until(lambda: not c.ready(port), 10, interval_s=0.05, since=t_fault)
    time.sleep(HOLD_S)
    t_heal = now()
    c.docker("start", cid)
    recover = wait_until(lambda: c.steady(), 60, since=t_heal)
    return {"fault": "docker kill coordinator-1", "detect": detect, "t_fault": t_fault, "t_heal": t_heal,
            "recover": recover, "in_flight_at_fault": in_flight}


def judge_coordinator(m, counts, recs):
    # Every request counts, those that met the restarted coordinator included: it serves only
    # once it has its first view of the cluster (etcd listed, every worker probed), and requests
    # that arrive before wait in its listen backlog instead of getting 503.
    bad = [r for r in recs if r.outcome in ("failed", "lost")]
    m["failed_while_down"] = sum(r.t_sched < m["t_heal"] for r in bad)
    m["failed_after_restart"] = len(bad) - m["failed_while_down"]
    ok = not bad and m["recover"] is not None
    return ok, (f"0 failed, 0 lost: the {counts['retried']} requests whose connection failed "
                f"({m['in_flight_at_fault']} in flight at the kill) were answered by coordinator-2; "
                f"errors while it was down {m['failed_while_down']}, from the restarted coordinator "
                f"{m['failed_after_restart']}; ready again with every worker in rotation")


def rolling_restart(c, load, cfg):
    detects, recovers = [], []
    for w in WORKERS:
        if wait_until(c.steady, 60) is None:
            raise RuntimeError(f"cluster not steady before restarting {w}")
        cid = c.container(w)
        stopper = threading.Thread(target=c.docker, args=("stop", "-t", "15", cid), kwargs={"timeout_s": 60})
        t0 = now()
        stopper.start()
        detects.append(wait_until(lambda: c.out_of_rotation(w), 20, interval_s=0.05, since=t0))
        stopper.join()
        stop_s = now() - t0
        t_start = now()
        c.docker("start", cid)
        recovers.append(c.serving_again(w, 60, since=t_start))
        log(f"  {w}: out of rotation after {secs(detects[-1])}, stopped after {stop_s:.2f} s, "
            f"serving again {secs(recovers[-1])} after start")
    worst = lambda xs: None if None in xs else max(xs)  # noqa: E731
    return {"fault": "docker stop -t 15, then start, each worker in turn", "detect": worst(detects),
            "t_heal": None, "recover": worst(recovers)}


SCENARIOS = [
    ("worker-kill", "docker kill a worker", worker_kill, judge_ejection),
    ("worker-pause", "docker pause a worker past its lease TTL", worker_pause, judge_pause),
    ("gray-failure", "cut a worker off the data network", gray_failure, judge_gray),
    ("etcd-leader-kill", "kill the etcd leader", etcd_leader_kill, judge_zero),
    ("coordinator-kill", "kill one coordinator", coordinator_kill, judge_coordinator),
    ("rolling-restart", "rolling restart of every worker", rolling_restart, judge_zero),
]


def run_scenario(c, load, cfg, key, title, body, judge):
    log(f"=== {key}: {title}")
    if wait_until(c.steady, 90) is None:
        raise RuntimeError("cluster not steady (a coordinator not ready or a worker out of rotation)")
    routing_before = c.routing_totals()
    t0 = now()
    time.sleep(PRE_S)
    m = body(c, load, cfg)
    time.sleep(POST_S)
    recs = load.window(t0, now())
    counts = tally(recs)
    # The coordinators' routing counters over the scenario (both summed): extra calls made.
    m["routing"] = routing_delta(routing_before, c.routing_totals())
    passed, criteria = judge(m, counts, recs)
    t_ref = m.get("t_fault") or t0
    for r in recs:
        if r.outcome in ("failed", "lost"):
            log(f"  {r.outcome} at fault{r.t_sched - t_ref:+.2f} s: {r.model} {r.rid} via coordinator-{r.coord + 1}: {r.detail}")
    if not passed:
        print_cluster_warnings(c, now() - t0 + 1.0)
    return {"scenario": key, "title": title, **counts, **{k: v for k, v in m.items() if not k.startswith("t_")},
            "passed": passed, "criteria": criteria}


# At most this many warning lines per service are printed for a failed scenario: enough to see
# what the coordinators and workers said about the failure, in CI output that keeps no logs.
WARN_LINES = 25
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def print_cluster_warnings(c, window_s):
    """The coordinators' and workers' WARN/ERROR log lines of the last `window_s` seconds."""
    since = f"{time.time() - window_s:.0f}"
    for service in ("coordinator-1", "coordinator-2", *WORKERS):
        try:
            proc = subprocess.run(["docker", "logs", "--since", since, c.container(service)],
                                  capture_output=True, text=True, timeout=30)
        except Exception as e:  # diagnostics must never turn a result into a crash
            print(f"  ({service}: no logs: {e})", flush=True)
            continue
        plain = ANSI_ESCAPE.sub("", proc.stdout + proc.stderr)
        lines = [ln for ln in plain.splitlines() if " WARN " in ln or " ERROR " in ln]
        if not lines:
            continue
        print(f"  {service}: {len(lines)} warnings in the scenario, the last {min(len(lines), WARN_LINES)}:")
        for ln in lines[-WARN_LINES:]:
            print(f"    {ln[:400]}")
    sys.stdout.flush()


def hedges(res):
    """The coordinators' hedges over a scenario: sent/won/refused by the budget."""
    r = res.get("routing") or {}
    return f"{r.get('hedges', 0)}/{r.get('hedges_won', 0)}/{r.get('hedges_refused', 0)}"


def report(res):
    print(f"{res['scenario']}: {res.get('fault', res['title'])}\n"
          f"  sent {res['sent']}  ok {res['ok']}  degraded {res['degraded']}  failed {res['failed']}  "
          f"lost {res['lost']}  (retried {res['retried']})  "
          f"detect {secs(res.get('detect'))}  recover {secs(res.get('recover'))}\n"
          f"  {'PASS' if res['passed'] else 'FAIL'}: {res['criteria']}", flush=True)
    if res.get("routing"):
        print("  routing: " + "  ".join(f"{k} {v}" for k, v in sorted(res["routing"].items())), flush=True)


def run_load(c, cfg, chosen, name, rate, body):
    """Every chosen scenario under `rate` requests/s; returns the results, baseline first."""
    log(f"##### load {name}: {rate:g} requests/s (open loop) over both coordinators, "
        "ensembles digits_soft/hard/fusion")
    if wait_until(c.steady, 90) is None:
        raise RuntimeError("cluster not steady before the load started")
    load = LoadGenerator(cfg.ports, rate, body, client=cfg.client)
    load.start()
    results = []
    try:
        routing_before = c.routing_totals()
        t0 = now()
        time.sleep(5)
        base = tally(load.window(t0, now()))
        routing = routing_delta(routing_before, c.routing_totals())
        results.append({"scenario": "baseline", "title": "no fault, 5 s", "fault": "none (5 s of load)", **base,
                        "detect": None, "recover": None, "routing": routing,
                        "passed": base["failed"] + base["lost"] == 0, "criteria": "0 failed, 0 lost"})
        report(results[-1])
        for key, title, body_fn, judge in chosen:
            try:
                res = run_scenario(c, load, cfg, key, title, body_fn, judge)
            except Exception as e:  # one broken scenario must not hide the others' figures
                res = {"scenario": key, "title": title, "sent": 0, "ok": 0, "degraded": 0, "failed": 0,
                       "lost": 0, "retried": 0, "passed": False, "criteria": f"error: {e}"}
            results.append(res)
            report(res)
    finally:
        load.stop()
        # Leave nothing paused or cut off, so that compose can remove it.
        for cid in c.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={cfg.project}",
                            "--filter", "status=paused", check=False).split():
            c.docker("unpause", cid, check=False)
        # And nothing stopped by SIGSTOP (worker-pause's fallback); SIGCONT is harmless otherwise.
        for cid in c.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={cfg.project}",
                            check=False).split():
            c.docker("kill", "--signal", "SIGCONT", cid, check=False)
    if load.max_lag_s > 0.25:
        log(f"load {name}: the generator fell up to {load.max_lag_s:.2f} s behind its schedule "
            "(this machine could not send the rate on time)")
    for r in results:
        r["load"], r["rate"] = name, rate
    return results


def table(results):
    print("\nload   rate/s  scenario            sent    ok  degr  fail  lost  retry   detect  recover"
          "  hedges s/w/r  result")
    for r in results:
        print(f"{r['load']:<6} {r['rate']:>6.0f}  {r['scenario']:<18} {r['sent']:>5} {r['ok']:>5} "
              f"{r['degraded']:>5} {r['failed']:>5} {r['lost']:>5} {r['retried']:>6} "
              f"{secs(r.get('detect')):>8} {secs(r.get('recover')):>8}  {hedges(r):>13}  "
              f"{'PASS' if r['passed'] else 'FAIL'}")


def probe(cfg, rate, body):
    """Open-loop load at `rate` for 1 s of warm-up and PROBE_S measured: (counts, p99 s)."""
    load = LoadGenerator(cfg.ports, rate, body, client=cfg.client)
    load.start()
    try:
        t0 = now() + 1.0
        time.sleep(1.0 + PROBE_S)
        recs = load.window(t0, t0 + PROBE_S)
    finally:
        load.stop()
    latencies = sorted(r.t_done - r.t_sched for r in recs if r.t_done is not None)
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("inf")
    return tally(recs), p99


def deadline_capacity(cfg, c, body, throughput):
    """The highest NEAR_STEPS fraction of `throughput` that the fault-free cluster answers whole
    and on time (see NEAR_STEPS), or the lowest step if none does (printed as such)."""
    for step in NEAR_STEPS:
        rate = step * throughput
        if wait_until(c.steady, 90) is None:
            raise RuntimeError("cluster not steady before a capacity probe")
        counts, p99 = probe(cfg, rate, body)
        held = counts["failed"] + counts["lost"] + counts["degraded"] == 0 and p99 <= PROBE_P99_LIMIT_S
        log(f"  probe {rate:.0f} requests/s ({step:.0%} of the throughput): sent {counts['sent']}, "
            f"failed {counts['failed']}, lost {counts['lost']}, degraded {counts['degraded']}, "
            f"p99 {p99 * 1000:.0f} ms: {'held' if held else 'not held'}")
        if held:
            return rate
        time.sleep(3)  # let the queues drain before the next step
    log(f"capacity: no step held; the near load uses the lowest, {rate:.0f} requests/s")
    return rate


def rates(cfg, c, body):
    """(name, requests/s) for each chosen load, and the measured capacity (a dict), measuring
    it first if a load needs it."""
    if cfg.rate:
        return [("custom", cfg.rate)], None
    names = [n for n in cfg.loads.split(",") if n]
    unknown = [n for n in names if n not in ("light", "real", "near")]
    if unknown:
        raise SystemExit(f"chaos: unknown load {','.join(unknown)} (light, real, near)")
    capacity = {}
    if any(n in ("real", "near") for n in names):
        log("measuring throughput: 128 requests always outstanding over both coordinators for 8 s")
        throughput, errors = measure_capacity(cfg.ports, body, client=cfg.client)
        capacity["throughput_rps"] = throughput
        log(f"throughput: {throughput:.0f} requests/s ({errors} errors while measuring)")
    if "near" in names:
        log(f"measuring capacity: open loop at falling steps of the throughput, {PROBE_S:g} s each, "
            f"until one is answered whole with p99 <= {PROBE_P99_LIMIT_S * 1000:.0f} ms")
        capacity["deadline_capacity_rps"] = deadline_capacity(cfg, c, body, capacity["throughput_rps"])
        log(f"capacity: {capacity['deadline_capacity_rps']:.0f} requests/s")
    throughput = capacity.get("throughput_rps")
    by_name = {"light": LIGHT_RATE,
               "real": max(REAL_RATE, throughput / 4) if throughput else REAL_RATE,
               "near": capacity.get("deadline_capacity_rps")}
    return [(n, by_name[n]) for n in names], capacity or None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose", default=os.environ.get("COMPOSE", "docker-compose"))
    ap.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "chorus-chaos"))
    ap.add_argument("--compose-file", action="append", default=[],
                    help="a compose file of the project, in order (repeat; default ../docker-compose.yml)")
    ap.add_argument("--ports", default="18000,18010", help="the coordinators' published REST ports")
    ap.add_argument("--admin-ports", default="18002,18012",
                    help="the coordinators' published admin ports (readiness, /chorus/workers)")
    ap.add_argument("--cafile", default="",
                    help="speak https to the REST ports, trusting this CA (the secure overlay)")
    ap.add_argument("--api-key-file", default="",
                    help="send the secret in this file as `Authorization: Bearer` on every request")
    ap.add_argument("--loads", default="light,real",
                    help="comma-separated loads to run every scenario at: light, real, near")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="one custom load instead, in requests/s (both coordinators together)")
    ap.add_argument("--ttl", type=int, default=3, help="the workers' lease TTL the cluster runs with")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--results", default="", help="write the results as JSON here")
    ap.add_argument("--body", default="fixtures/digits/sample-request.json")
    cfg = ap.parse_args()
    cfg.ports = [int(p) for p in cfg.ports.split(",")]
    cfg.admin_ports = [int(p) for p in cfg.admin_ports.split(",")]
    cfg.compose_file = cfg.compose_file or [os.path.join(os.path.dirname(__file__), "..", "docker-compose.yml")]
    cfg.client = Client.from_files(cfg.cafile, cfg.api_key_file)
    chosen = [s for s in SCENARIOS if not cfg.only or s[0] in cfg.only.split(",")]

    c = Cluster(cfg.compose, cfg.project, cfg.compose_file, cfg.admin_ports)
    with open(cfg.body, "rb") as f:
        body = f.read()
    log(f"waiting for a steady cluster: {cfg.client.scheme} on 127.0.0.1:{cfg.ports[0]} and :{cfg.ports[1]}"
        f"{' with an API key' if cfg.client.api_key else ''}, admin on :{cfg.admin_ports[0]} and :{cfg.admin_ports[1]}")
    if wait_until(c.steady, 180) is None:
        print("chaos: the cluster never became steady", file=sys.stderr)
        return 1
    loads, capacity = rates(cfg, c, body)
    results = []
    for name, rate in loads:
        results += run_load(c, cfg, chosen, name, rate, body)
        table(results)
    if cfg.results:
        with open(cfg.results, "w") as f:
            json.dump({"capacity": capacity, "loads": dict(loads), "lease_ttl_s": cfg.ttl,
                       "results": results}, f, indent=2)
    failed = [f"{r['scenario']}@{r['load']}" for r in results if not r["passed"]]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed{': ' if failed else ''}{', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        sys.exit(130)

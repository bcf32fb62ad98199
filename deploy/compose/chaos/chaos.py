#!/usr/bin/env python3
"""Chaos suite on the compose cluster: under steady open-loop load through both coordinators,
inject one fault at a time, measure, heal, and judge. deploy/compose/chaos.sh brings the cluster
up, runs this, and removes the cluster whatever happens.

Per scenario it prints requests sent, ok, degraded (answered, but not by every member), failed
(an HTTP error), lost (no answer even after the retry), the requests the load generator retried
on the other coordinator, time to detect and time to recover, and whether the pass criteria held.
"""

import argparse
import json
import os
import sys
import threading
import time

from chaoslib import WORKERS, Cluster, LoadGenerator, now, routing_delta, tally, wait_until

PRE_S = 2.0  # steady load before each fault
HOLD_S = 4.0  # load with the fault in place, after it was detected
POST_S = 3.0  # load after recovery


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


def worker_pause(c, load, cfg):
    w = "worker-3"
    pause_s = cfg.ttl + 3
    cid = c.container(w)
    lease_before = c.worker_lease(w)
    t_fault = now()
    c.docker("pause", cid)
    in_flight = load.in_flight_at(t_fault)
    detect = wait_until(lambda: c.out_of_rotation(w), pause_s, since=t_fault)
    lease_gone = wait_until(lambda: c.worker_lease(w) is None, max(0.5, t_fault + pause_s - now()),
                            since=t_fault)
    time.sleep(max(0.0, t_fault + pause_s - now()))
    t_heal = now()
    c.docker("unpause", cid)
    recover = c.serving_again(w, 60, since=t_heal)
    lease_after = c.worker_lease(w)
    return {"fault": f"docker pause {w} for {pause_s} s (lease TTL {cfg.ttl} s)", "detect": detect,
            "t_fault": t_fault, "t_heal": t_heal, "recover": recover, "in_flight_at_fault": in_flight,
            "lease_expired_after": lease_gone,
            "re_registered": lease_after is not None and lease_after != lease_before}


def judge_pause(m, counts, recs):
    bad = counts["failed"] + counts["lost"]
    ok = bad <= m["in_flight_at_fault"] and m["re_registered"] and m["recover"] is not None
    return ok, (f"failed+lost {bad} <= in flight at the pause {m['in_flight_at_fault']} (target 0), "
                f"re-registered under a new lease: {m['re_registered']}, serving again")


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
    if m["detect"] is None:
        return False, "ejected within 3 s: never ejected"
    ejected_at = m["t_fault"] + m["detect"]
    bad = [r for r in recs if r.outcome in ("failed", "lost")]
    m["failed_before_ejection"] = sum(r.t_sched < ejected_at for r in bad)
    m["failed_while_ejected"] = sum(ejected_at <= r.t_sched < m["t_heal"] for r in bad)
    m["failed_after_reconnect"] = sum(r.t_sched >= m["t_heal"] for r in bad)
    after = m["failed_while_ejected"] + m["failed_after_reconnect"]
    ok = (m["detect"] <= 3.0 and after == 0 and counts["lost"] == 0 and m["still_registered"]
          and m["recover"] is not None)
    return ok, (f"ejected within 3 s; then 0 failed (while cut off {m['failed_while_ejected']}, "
                f"after reconnecting {m['failed_after_reconnect']}; before ejection "
                f"{m['failed_before_ejection']}); 0 lost; still registered in etcd while cut off: "
                f"{m['still_registered']}; back in rotation after reconnecting")


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
    port = cfg.ports[0]
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
    ("worker-kill", "docker kill a worker", worker_kill, judge_zero),
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
    return {"scenario": key, "title": title, **counts, **{k: v for k, v in m.items() if not k.startswith("t_")},
            "passed": passed, "criteria": criteria}


def report(res):
    print(f"{res['scenario']}: {res.get('fault', res['title'])}\n"
          f"  sent {res['sent']}  ok {res['ok']}  degraded {res['degraded']}  failed {res['failed']}  "
          f"lost {res['lost']}  (retried {res['retried']})  "
          f"detect {secs(res.get('detect'))}  recover {secs(res.get('recover'))}\n"
          f"  {'PASS' if res['passed'] else 'FAIL'}: {res['criteria']}", flush=True)
    if res.get("routing"):
        print("  routing: " + "  ".join(f"{k} {v}" for k, v in sorted(res["routing"].items())), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose", default=os.environ.get("COMPOSE", "docker-compose"))
    ap.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "chorus-chaos"))
    ap.add_argument("--compose-file", default=os.path.join(os.path.dirname(__file__), "..", "docker-compose.yml"))
    ap.add_argument("--ports", default="18000,18010", help="the coordinators' published ports")
    ap.add_argument("--rate", type=float, default=30.0, help="requests per second, both coordinators together")
    ap.add_argument("--ttl", type=int, default=3, help="the workers' lease TTL the cluster runs with")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--results", default="", help="write the results as JSON here")
    ap.add_argument("--body", default="fixtures/digits/sample-request.json")
    cfg = ap.parse_args()
    cfg.ports = [int(p) for p in cfg.ports.split(",")]
    chosen = [s for s in SCENARIOS if not cfg.only or s[0] in cfg.only.split(",")]

    c = Cluster(cfg.compose, cfg.project, cfg.compose_file, cfg.ports)
    with open(cfg.body, "rb") as f:
        body = f.read()
    log(f"waiting for a steady cluster on 127.0.0.1:{cfg.ports[0]} and :{cfg.ports[1]}")
    if wait_until(c.steady, 180) is None:
        print("chaos: the cluster never became steady", file=sys.stderr)
        return 1

    load = LoadGenerator(cfg.ports, cfg.rate, body)
    load.start()
    log(f"open-loop load: {cfg.rate:g} requests/s over both coordinators, ensembles digits_soft/hard/fusion")
    results = []
    try:
        t0 = now()
        time.sleep(5)
        base = tally(load.window(t0, now()))
        results.append({"scenario": "baseline", "title": "no fault, 5 s", "fault": "none (5 s of load)", **base,
                        "detect": None, "recover": None, "passed": base["failed"] + base["lost"] == 0,
                        "criteria": "0 failed, 0 lost"})
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

    print("\nscenario            sent    ok  degr  fail  lost  retry   detect  recover  result")
    for r in results:
        print(f"{r['scenario']:<18} {r['sent']:>5} {r['ok']:>5} {r['degraded']:>5} {r['failed']:>5} "
              f"{r['lost']:>5} {r['retried']:>6} {secs(r.get('detect')):>8} {secs(r.get('recover')):>8}  "
              f"{'PASS' if r['passed'] else 'FAIL'}")
    if cfg.results:
        with open(cfg.results, "w") as f:
            json.dump({"rate": cfg.rate, "lease_ttl_s": cfg.ttl, "results": results}, f, indent=2)
    failed = [r["scenario"] for r in results if not r["passed"]]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        sys.exit(130)

#!/usr/bin/python3
# --metrics during and after a fio run (two jobs, two connections, mixed 4k-256k random reads and
# writes for 3 seconds), scraped over HTTP and parsed with prometheus_client's own parser:
# - while fio runs, both connections show as open and every counter only grows from scrape to
#   scrape;
# - afterwards, the bytes and requests counted per operation are exactly what fio's JSON report
#   says it moved (io_bytes, total_ios), no connection is open, every latency histogram is well
#   formed (its count is the operation's request count), and the families have Prometheus' types.
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import check, check_eq, run, tmpdir  # noqa: E402
from metrics import check_histograms, metrics_server, scrape, value  # noqa: E402

COUNTERS = ("nbdforge_requests_total", "nbdforge_bytes_total", "nbdforge_connections_total")


def main():
    with metrics_server(["memory", "256M"]) as srv:
        samples, types = scrape(srv.metrics_url)
        check_eq(value(samples, "nbdforge_connections_open"), 0, "connections open before fio")
        # The harness's readiness probe has connected once already.
        base = value(samples, "nbdforge_connections_total")

        out = os.path.join(tmpdir(), "fio.json")
        fio = subprocess.Popen(
            ["fio", "--name=mixed", "--ioengine=nbd", "--uri=" + srv.uri, "--rw=randrw",
             "--bssplit=4k/40:64k/40:256k/20", "--size=128M", "--numjobs=2", "--iodepth=8",
             "--time_based", "--runtime=3", "--output-format=json", "--output=" + out],
            cwd=tmpdir())
        scrapes, open_seen = [], 0
        while fio.poll() is None:
            samples, _ = scrape(srv.metrics_url)
            open_seen = max(open_seen, value(samples, "nbdforge_connections_open"))
            scrapes.append(samples)
            time.sleep(0.1)
        check_eq(fio.returncode, 0, "fio's exit status")
        check(len(scrapes) >= 10, "only %d scrapes while fio ran" % len(scrapes))
        check_eq(open_seen, 2, "most connections seen open while fio ran (two jobs)")
        for before, after in zip(scrapes, scrapes[1:]):
            for key, v in before.items():
                if key[0] in COUNTERS or key[0].startswith("nbdforge_request_duration_seconds"):
                    check(after.get(key, 0) >= v, "%s %s went down: %s -> %s"
                          % (key[0], dict(key[1]), v, after.get(key, 0)))
        mid = [value(s, "nbdforge_bytes_total", op="read", export="") for s in scrapes]
        check(len(set(mid)) >= 5, "read bytes did not grow while fio ran: %r" % mid)

        with open(out) as f:
            jobs = json.load(f)["jobs"]
        for job in jobs:
            check_eq(job["error"], 0, "fio job error")
        # fio's clients have closed once it exits, but the server may not have noticed yet.
        deadline = time.monotonic() + 10
        while True:
            samples, types = scrape(srv.metrics_url)
            if value(samples, "nbdforge_connections_open") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        check_eq(value(samples, "nbdforge_connections_open"), 0, "connections open after fio")
        print("fio made %d connections" % (value(samples, "nbdforge_connections_total") - base))
        check(value(samples, "nbdforge_connections_total") >= base + 2, "connections counted")
        for op, key in (("read", "read"), ("write", "write")):
            want_bytes = sum(j[key]["io_bytes"] for j in jobs)
            want_ios = sum(j[key]["total_ios"] for j in jobs)
            print("%s: fio moved %d bytes in %d requests" % (op, want_bytes, want_ios))
            check(want_ios > 1000, "fio did little %s" % op)
            check_eq(value(samples, "nbdforge_bytes_total", op=op, export=""), want_bytes, op + " bytes")
            check_eq(value(samples, "nbdforge_requests_total", op=op, export=""), want_ios, op + " requests")
            check(value(samples, "nbdforge_request_duration_seconds_sum", op=op, export="") > 0,
                  op + " latency sum")
        errors = {k: v for k, v in samples.items() if k[0] == "nbdforge_errors_total"}
        check_eq(errors, {}, "errors")
        check(check_histograms(samples) >= 2, "histograms for read and write")
        check_eq(types.get("nbdforge_requests"), "counter", "type of nbdforge_requests_total")
        check_eq(types.get("nbdforge_bytes"), "counter", "type of nbdforge_bytes_total")
        check_eq(types.get("nbdforge_connections_open"), "gauge", "type of nbdforge_connections_open")
        check_eq(types.get("nbdforge_request_duration_seconds"), "histogram", "type of the latency")


if __name__ == "__main__":
    run(main)

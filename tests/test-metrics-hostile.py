#!/usr/bin/python3
# Scrapers cannot hurt a server with --metrics, while an NBD client reads all along:
# - a scraper that sends half a request and stalls does not delay another one's scrape;
# - a 4 MiB request is answered 431 after 8 KiB, and the server's memory does not grow with it;
# - 300 silent connections at once: scrapes still succeed at once, the server holds at most 16 of
#   them (its open descriptors say so) and starts no threads for them;
# - a silent scraper is disconnected after 10 seconds;
# - GET / is 404, POST /metrics 405, a request line without a version 400, HEAD /metrics 200;
# - the NBD client's reads all succeed and are all counted.
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from harness import check, check_eq, nbd_handle, run, status_field  # noqa: E402
from metrics import eventually, http_status, metrics_server, scrape, value  # noqa: E402


def connect(url):
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=15)
    return s


def answer(url, request):
    s = connect(url)
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def timed_scrape(url, what, limit=2.0):
    start = time.monotonic()
    samples, _ = scrape(url, timeout=limit + 3)
    took = time.monotonic() - start
    check(took < limit, "%s: a scrape took %.2f s" % (what, took))
    return samples


def descriptors(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def main():
    with metrics_server(["memory", "64M"]) as srv:
        url = srv.metrics_url
        reads, stop, failures = [0], threading.Event(), []

        def reader():
            h = nbd_handle(srv.uri)
            try:
                while not stop.is_set():
                    h.pread(65536, (reads[0] % 1024) * 65536)
                    reads[0] += 1
            except Exception as e:  # noqa: B902 - reported by the main thread
                failures.append(e)
            h.shutdown()

        client = threading.Thread(target=reader)
        client.start()
        timed_scrape(url, "first scrape")
        fds0, threads0, rss0 = descriptors(srv.pid), status_field(srv.pid, "Threads"), status_field(srv.pid, "VmRSS")

        stalled = connect(url)
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHo")
        timed_scrape(url, "with a stalled scraper")

        s = connect(url)
        reply = b""
        try:
            for _ in range(64):
                s.sendall(b"X-Filler: " + b"a" * 65524 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered and stopped reading: what it may do
        s.settimeout(5)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        s.close()
        check(reply.startswith(b"HTTP/1.1 431 "), "reply to a 4 MiB request: %r" % reply[:80])

        flood = []
        for _ in range(300):
            flood.append(connect(url))
        time.sleep(0.5)
        samples = timed_scrape(url, "during a flood of 300 silent connections")
        check(value(samples, "nbdforge_requests_total", op="read", export="") > 0, "reads counted")
        fds = descriptors(srv.pid)
        print("descriptors: %d before the flood, %d during it" % (fds0, fds))
        check(fds <= fds0 + 17, "the server holds %d descriptors, %d before the flood" % (fds, fds0))
        # The NBD client's connection may add a worker meanwhile; a thread per scraper would be 300.
        threads = status_field(srv.pid, "Threads")
        check(threads <= threads0 + 2, "server threads: %d before the flood, %d during it" % (threads0, threads))
        rss = status_field(srv.pid, "VmRSS")
        print("RSS: %d kB before, %d kB after" % (rss0, rss))
        check(rss < rss0 + 16 * 1024, "RSS grew from %d to %d kB" % (rss0, rss))
        for f in flood:
            f.close()
        stalled.close()

        silent = connect(url)
        start = time.monotonic()
        silent.settimeout(15)
        check_eq(silent.recv(1), b"", "what a silent scraper gets")
        waited = time.monotonic() - start
        check(9 < waited < 13, "a silent scraper was dropped after %.1f s, want 10" % waited)

        base = url.rsplit("/", 1)[0]
        check_eq(http_status(base + "/"), 404, "GET /")
        check_eq(http_status(base + "/metricsx"), 404, "GET /metricsx")
        check(answer(url, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.1 405 "),
              "POST /metrics")
        check(answer(url, b"GET /metrics\r\n\r\n").startswith(b"HTTP/1.1 400 "), "a request without version")
        head = answer(url, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), "HEAD /metrics: %r" % head[-40:])

        stop.set()
        client.join()
        check_eq(failures, [], "NBD client failures")
        print("the NBD client read %d times" % reads[0])
        eventually(url, [(("nbdforge_requests_total", {"op": "read", "export": ""}), reads[0])], "reads counted")


if __name__ == "__main__":
    run(main)

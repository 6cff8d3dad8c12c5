"""Helpers for the tests of `--metrics`: start a server with the endpoint on a free loopback
port, learn the port from its debug log, scrape the page over plain HTTP and parse it with the
Prometheus client library's own parser (python3-prometheus-client)."""

import re
import time
import urllib.error
import urllib.request

from harness import CheckFailed, Server


def metrics_server(args, options=()):
    """A Server with --metrics=127.0.0.1:0 and -v; .metrics_url is where the page is."""
    srv = Server(args, options=["-v", "--metrics=127.0.0.1:0"] + list(options))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(r"metrics on (http://[0-9.:]+/metrics)", srv.stderr())
        if m:
            srv.metrics_url = m.group(1)
            return srv
        time.sleep(0.05)
    raise CheckFailed("the server did not say where its metrics are:\n" + srv.stderr())


def scrape_text(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status != 200:
            raise CheckFailed("%s: HTTP status %d" % (url, r.status))
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain; version=0.0.4"):
            raise CheckFailed("%s: Content-Type %r" % (url, ctype))
        return r.read().decode()


def scrape(url, timeout=5):
    """The page as {(sample name, frozenset of label pairs): value}, parsed by prometheus_client,
    and the families' types {family name: type}."""
    from prometheus_client.parser import text_string_to_metric_families
    samples, types = {}, {}
    for family in text_string_to_metric_families(scrape_text(url, timeout)):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples, name, **labels):
    """One sample's value; 0 when the page does not have it (series appear once used)."""
    return samples.get((name, frozenset(labels.items())), 0)


def check_histograms(samples):
    """Every latency histogram is well formed: cumulative buckets that never go down, +Inf equal to
    _count, and _count equal to the requests counted for the same labels."""
    name = "nbdforge_request_duration_seconds"
    series = {k[1] for k in samples if k[0] == name + "_count"}
    for labels in series:
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                          if k[0] == name + "_bucket" and k[1] - {("le", dict(k[1])["le"])} == labels))
        counts = [v for _, v in buckets]
        if counts != sorted(counts) or buckets[-1][0] != float("inf"):
            raise CheckFailed("histogram %s: buckets %r" % (dict(labels), buckets))
        count = samples[(name + "_count", labels)]
        if buckets[-1][1] != count:
            raise CheckFailed("histogram %s: +Inf %s != count %s" % (dict(labels), buckets[-1][1], count))
        if samples.get(("nbdforge_requests_total", labels)) != count:
            raise CheckFailed("histogram %s: count %s != requests %s"
                              % (dict(labels), count, samples.get(("nbdforge_requests_total", labels))))
    return len(series)


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def eventually(url, want, what, timeout=10):
    """Scrapes until every sample in `want` ({(name, {labels}): value}) has its value, and returns
    the page. A request is counted just after its reply is sent, and a connection when the server
    sees its client leave, so a client may get there a moment before the page does."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(url)
        wrong = ["%s%s: got %s, want %s" % (name, labels, value(samples, name, **labels), v)
                 for (name, labels), v in want if value(samples, name, **labels) != v]
        if not wrong:
            return samples
        if time.monotonic() > deadline:
            raise CheckFailed("%s:\n  %s" % (what, "\n  ".join(wrong)))
        time.sleep(0.05)

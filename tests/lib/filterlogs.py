"""What the log and stats filters write, as nbdkit-log-filter(1) and nbdkit-stats-filter(1) define
it: regular expressions for every line, parsers that fail on any line that does not match, and a
way to run the same workload against nbdkit itself to compare the shape of the output.

    entries = parse_log(text)        # list of dicts; raises CheckFailed on a malformed line
    check_pairs(entries)             # every request logged going in and coming out, ids in order
    summary = parse_stats(text)      # {"total": {...}, "read": {...}, ...}; raises likewise
    with peer_server(["memory", "1M", ...]) as srv: ...   # the same, served by nbdkit
"""

import os
import re
import shutil

from harness import CheckFailed, Server, check

TS = r"(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6})"
HEX = r"0x[0-9a-f]+"
# A string as nbdkit's shell_quote writes it: bare when made of safe characters, else quoted.
QUOTED = r'(?:[A-Za-z0-9:/=,_.-]+|"(?:[^"\\$`]|\\[$`"\\])*")'
RESULT = r"return=(?P<ret>0|-1 error=(?P<err>E[A-Z]+))"
EXTENT = HEX + " " + HEX + r' "(?:hole|zero|hole,zero|)"'

# Fields after "ACTION id=N " of a request going in, by action.
REQUEST_FIELDS = {
    "Read": "offset=(?P<offset>%s) count=(?P<count>%s)" % (HEX, HEX),
    "Write": "offset=(?P<offset>%s) count=(?P<count>%s) fua=(?P<fua>[01])" % (HEX, HEX),
    "Trim": "offset=(?P<offset>%s) count=(?P<count>%s) fua=(?P<fua>[01])" % (HEX, HEX),
    "Zero": ("offset=(?P<offset>%s) count=(?P<count>%s) trim=(?P<trim>[01]) fua=(?P<fua>[01]) "
             "fast=(?P<fast>[01])") % (HEX, HEX),
    "Extents": "offset=(?P<offset>%s) count=(?P<count>%s) req_one=(?P<req_one>[01])" % (HEX, HEX),
    "Cache": "offset=(?P<offset>%s) count=(?P<count>%s)" % (HEX, HEX),
}

CONN = r"connection=(?P<conn>\d+) "
LOG_LINES = [
    ("ready", re.compile(r"^%s Ready thread_model=(?P<model>[0-3])$" % TS)),
    ("fork", re.compile(r"^%s Fork$" % TS)),
    ("enter", re.compile(r"^%s (?P<act>Preconnect) id=(?P<id>\d+) readonly=(?P<readonly>[01]) \.\.\.$" % TS)),
    ("leave", re.compile(r"^%s \.\.\.(?P<act>Preconnect) id=(?P<id>\d+) %s$" % (TS, RESULT))),
    ("enter", re.compile(r"^%s (?P<act>ListExports) id=(?P<id>\d+) readonly=[01] tls=[01] \.\.\.$" % TS)),
    ("leave", re.compile(r"^%s \.\.\.(?P<act>ListExports) id=(?P<id>\d+) (?:exports=\((?P<exports>%s(?: %s)*)?\) )?%s$"
                         % (TS, QUOTED, QUOTED, RESULT))),
    ("connect", re.compile(
        r"^%s %sConnect export=(?P<export>%s) tls=(?P<tls>[01]) size=(?P<size>%s) minsize=%s prefsize=%s "
        r"maxsize=%s write=(?P<write>[01]) flush=[01] rotational=[01] trim=(?P<trim>[01]) "
        r"zero=(?P<zero>[012]) fua=(?P<fua>[012]) extents=[01] cache=[012] fast_zero=[01]$"
        % (TS, CONN, QUOTED, HEX, HEX, HEX, HEX))),
    ("disconnect", re.compile(r"^%s %sDisconnect transactions=(?P<transactions>\d+)$" % (TS, CONN))),
    ("enter", re.compile(r"^%s %s(?P<act>Flush) id=(?P<id>\d+) \.\.\.$" % (TS, CONN))),
    ("leave", re.compile(r"^%s %s\.\.\.(?P<act>Read|Write|Trim|Zero|Cache|Flush) id=(?P<id>\d+) %s$"
                         % (TS, CONN, RESULT))),
    ("leave", re.compile(r"^%s %s\.\.\.(?P<act>Extents) id=(?P<id>\d+) (?:extents=\((?P<extents>%s(?: %s)*)\) )?%s$"
                         % (TS, CONN, EXTENT, EXTENT, RESULT))),
] + [
    ("enter", re.compile(r"^%s %s(?P<act>%s) id=(?P<id>\d+) %s \.\.\.$" % (TS, CONN, act, fields)))
    for act, fields in REQUEST_FIELDS.items()
]


def parse_log(text):
    """Every line of a log file as a dict (kind, the named fields, line); fails on any line that
    matches no form of nbdkit's format, and on a file that does not end with a newline."""
    check(text == "" or text.endswith("\n"), "the log does not end with a newline: %r" % text[-80:])
    entries = []
    for line in text.splitlines():
        for kind, rx in LOG_LINES:
            m = rx.match(line)
            if m:
                e = {k: v for k, v in m.groupdict().items() if v is not None}
                e["kind"] = kind
                e["line"] = line
                entries.append(e)
                break
        else:
            raise CheckFailed("log line in no known format: %r" % line)
    return entries


def check_pairs(entries):
    """Each request of a connection is logged going in and coming out exactly once, under an id
    unique in its open of the export (ids count from 1 again when a connection opens the export a
    second time, after NBD_OPT_INFO); requests running in parallel may be logged out of id order,
    but the ids are 1 to N, and Disconnect says N. The server's own calls (Preconnect,
    ListExports) are only counted: as many replies as calls, since nbdkit 1.32 may log a reply
    under the id of a later call when two clients connect at once."""
    pending = {}
    ids = {}
    calls = {}

    def check_ids(scope):
        seen = sorted(ids.get(scope, []))
        check(seen == list(range(1, len(seen) + 1)), "ids of %r are not 1..N: %r" % (scope, seen))
        return len(seen)

    for e in entries:
        if "conn" not in e:
            if e["kind"] in ("enter", "leave"):
                calls.setdefault(e["act"], []).append(e["kind"])
            continue
        scope = e["conn"]
        if e["kind"] == "connect":
            check(not any(k[0] == scope for k in pending), "connect with requests still open: %s" % e["line"])
            ids[scope] = []
        elif e["kind"] == "enter":
            key = (scope, e["id"])
            check(key not in pending, "id used twice: %s" % e["line"])
            pending[key] = e
            ids.setdefault(scope, []).append(int(e["id"]))
        elif e["kind"] == "leave":
            key = (scope, e["id"])
            check(key in pending, "reply without a request: %s" % e["line"])
            check(pending.pop(key)["act"] == e["act"], "reply to another action: %s" % e["line"])
        elif e["kind"] == "disconnect":
            n = check_ids(scope)
            check(int(e["transactions"]) == n, "%s, but %d requests were logged" % (e["line"], n))
    check(not pending, "requests never answered: %r" % [e["line"] for e in pending.values()])
    for scope in ids:
        check_ids(scope)
    for act, kinds in calls.items():
        check(kinds.count("enter") == kinds.count("leave"), "%s: %d calls, %d replies"
              % (act, kinds.count("enter"), kinds.count("leave")))
    return entries


def shape(entries):
    """The log without what differs between runs: timestamps and connection numbers."""
    out = []
    for e in entries:
        line = re.sub(r"^" + TS + " ", "", e["line"])
        out.append(re.sub(r"^connection=\d+ ", "connection=N ", line))
    return out


SIZE = r"(?:\d+ bytes|\d+\.\d\d [KMG]iB)"
RATE = r"(?:%s|\(n/a\))/s" % SIZE
PCT = r" *\d+\.\d%"
STATS_OPS = ("read", "write", "trim", "zero", "extents", "cache", "flush")
TOTAL_RX = re.compile(r"^total: (?P<ops>\d+) ops, (?P<secs>\d+\.\d{6}) s, (?P<bytes>%s), (?P<rate>%s)$"
                      % (SIZE, RATE))
OP_RX = re.compile(r"^(?P<op>%s): (?P<ops>\d+) ops, (?P<secs>\d+\.\d{6}) s, (?P<bytes>%s), (?P<oprate>%s) op, "
                   r"(?P<rate>%s) total$" % ("|".join(STATS_OPS), SIZE, RATE, RATE))
BREAKDOWN = "  Request size and alignment breakdown:"
SIZE_RX = re.compile(r"^    (?P<bits>[ \d]\d) bits: (?P<pct>%s) \((?P<reqs>\d+) reqs, (?P<bytes>%s) total\)$"
                     % (PCT, SIZE))
OTHER_RX = re.compile(r"^    other sizes: (?P<pct>%s) \((?P<reqs>\d+) reqs, (?P<bytes>%s) total\)$" % (PCT, SIZE))
ALIGN_RX = re.compile(r"^         (?P<bits>[ \d]\d) bit aligned: (?P<pct>%s) \((?P<reqs>\d+)\)$" % PCT)
ALIGN_REST_RX = re.compile(r"^         (?P<bits>[ \d]\d)\+ bit-aligned: (?P<pct>%s) \((?P<reqs>\d+)\)$" % PCT)


def parse_stats(text):
    """A stats summary: {"total": fields, "read": fields with "sizes": [...], ...}, in file order
    under "order". Fails on any line out of nbdkit's format or out of place."""
    check(text.endswith("\n"), "the summary does not end with a newline: %r" % text[-80:])
    lines = text.splitlines()
    m = TOTAL_RX.match(lines[0]) if lines else None
    check(m is not None, "first line is not the total: %r" % lines[:1])
    out = {"total": m.groupdict(), "order": []}
    op = None
    in_breakdown = False
    for line in lines[1:]:
        if in_breakdown:
            if line == "":
                in_breakdown = False
                continue
            for kind, rx in (("size", SIZE_RX), ("other", OTHER_RX), ("aligned", ALIGN_RX),
                             ("aligned+", ALIGN_REST_RX)):
                m = rx.match(line)
                if m:
                    d = m.groupdict()
                    d["kind"] = kind
                    if kind in ("size", "other"):
                        op["sizes"].append(d)
                        d["alignments"] = []
                    else:
                        check(op["sizes"] and op["sizes"][-1]["kind"] == "size",
                              "alignment line outside a size class: %r" % line)
                        op["sizes"][-1]["alignments"].append(d)
                    break
            else:
                raise CheckFailed("breakdown line in no known format: %r" % line)
            continue
        m = OP_RX.match(line)
        if m:
            op = m.groupdict()
            op["sizes"] = []
            check(op["op"] not in out, "%s listed twice" % op["op"])
            if out["order"]:
                check(STATS_OPS.index(out["order"][-1]) < STATS_OPS.index(op["op"]),
                      "%s out of order after %s" % (op["op"], out["order"][-1]))
            out[op["op"]] = op
            out["order"].append(op["op"])
            continue
        if line == BREAKDOWN and op is not None and not op["sizes"]:
            in_breakdown = True
            continue
        raise CheckFailed("summary line in no known format or out of place: %r" % line)
    return out


def stats_shape(text):
    """The summary without what depends on timing: seconds and rates."""
    text = re.sub(r"\d+\.\d{6} s", "T s", text)
    return re.sub(RATE, "R/s", text)


def peer_server(args, options=()):
    """The real nbdkit serving the same command line, under the test harness."""
    nbdkit = shutil.which("nbdkit")
    check(nbdkit is not None, "nbdkit is not installed (apt-get install nbdkit)")
    saved = os.environ.get("NBDFORGE")
    os.environ["NBDFORGE"] = nbdkit
    try:
        return Server(args, options=options)
    finally:
        if saved is None:
            del os.environ["NBDFORGE"]
        else:
            os.environ["NBDFORGE"] = saved

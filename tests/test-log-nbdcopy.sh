#!/usr/bin/env bash
# Many requests in flight through the log filter, from nbdcopy (several at once on each of four
# connections): every line is in nbdkit's format, every request is logged going in and coming
# out under an id unique on its connection, Disconnect counts them, the writes logged add up to
# what was copied, and the data read back through the filter is byte for byte what was written.
# Passes against nbdkit 1.32 too.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in" 24M
start_server --filter=log memory 24M logfile="$tmp/log"
nbdcopy --connections=4 --requests=16 "$tmp/in" "$uri"
nbdcopy --connections=4 --requests=16 "$uri" "$tmp/out"
same_file "$tmp/in" "$tmp/out"
stop_server "$server_pid"
PYTHONPATH="$repo/tests/lib" python3 - "$tmp/log" <<'PY'
import sys
from filterlogs import check_pairs, parse_log
entries = check_pairs(parse_log(open(sys.argv[1]).read()))
writes = [e for e in entries if e["kind"] == "enter" and e["act"] == "Write"]
reads = [e for e in entries if e["kind"] == "enter" and e["act"] == "Read"]
written = sum(int(e["count"], 16) for e in writes)
read = sum(int(e["count"], 16) for e in reads)
assert written == 24 << 20, "writes logged add up to %d bytes" % written
assert read == 24 << 20, "reads logged add up to %d bytes" % read
conns = {e["conn"] for e in writes} | {e["conn"] for e in reads}
assert len(conns) >= 2, "nbdcopy used one connection only: %r" % conns
failed = [e["line"] for e in entries if e.get("ret", "0") != "0"]
assert not failed, failed
print("%d lines, %d writes, %d reads, connections %s" % (len(entries), len(writes), len(reads), sorted(conns)))
PY
echo OK

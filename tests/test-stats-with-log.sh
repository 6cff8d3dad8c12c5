#!/usr/bin/env bash
# The log and stats filters stacked (as the benchmark runs them), under nbdcopy with many
# requests in flight on several connections: the data copied in and out is unchanged, the log is
# well formed, and the two filters agree: as many Write and Read lines as the summary counts, for
# the same number of bytes. Passes against nbdkit 1.32 too.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

random_file "$tmp/in" 32M
start_server --filter=log --filter=stats memory 32M logfile="$tmp/log" statsfile="$tmp/stats.txt"
nbdcopy --connections=4 "$tmp/in" "$uri"
nbdcopy --connections=2 "$uri" "$tmp/out"
same_file "$tmp/in" "$tmp/out"
stop_server "$server_pid"
cat "$tmp/stats.txt"
PYTHONPATH="$repo/tests/lib" python3 - "$tmp/log" "$tmp/stats.txt" <<'PY'
import sys
from filterlogs import check_pairs, parse_log, parse_stats
entries = check_pairs(parse_log(open(sys.argv[1]).read()))
stats = parse_stats(open(sys.argv[2]).read())
for act, kind in (("Write", "write"), ("Read", "read")):
    done = [e for e in entries if e["kind"] == "enter" and e["act"] == act]
    assert str(len(done)) == stats[kind]["ops"], (act, len(done), stats[kind])
    assert sum(int(e["count"], 16) for e in done) == 32 << 20, act
    assert stats[kind]["bytes"] == "32.00 MiB", stats[kind]
print("log and stats agree")
PY
echo OK

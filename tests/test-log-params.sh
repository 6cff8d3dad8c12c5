#!/usr/bin/env bash
# The log filter's parameters: a bad logappend value or a log file that cannot be created stops
# the server before it listens, with exit status 1 and a message naming the parameter and the
# value (or the file); without logfile or logscript the filter is inactive and creates nothing;
# --help lists the three parameters; the parameters may come anywhere among the plugin's.
#
# Fails against nbdkit 1.32: for logappend=maybe it says "could not decipher boolean (maybe)",
# which does not name the parameter.
source "$(dirname "$0")/lib/functions.sh"


bad_args --filter=log memory 1M logfile="$tmp/x.log" logappend=maybe -- logappend maybe
bad_args --filter=log memory 1M logfile="$tmp/no/such/dir/x.log" -- "$tmp/no/such/dir/x.log"
[ ! -e "$tmp/x.log" ] || fail "a log file was created although the command line was refused"

# Inactive: serves, writes nothing anywhere.
mkdir "$tmp/cwd"
(cd "$tmp/cwd" && start_server --filter=log memory 1M && nbdsh -u "$uri" -c 'h.pwrite(b"1" * 512, 0)' &&
    stop_server "$server_pid")
[ -z "$(ls -A "$tmp/cwd")" ] || fail "the inactive filter created $(ls -A "$tmp/cwd")"

# Parameters before, between and after the plugin's, and logappend alone.
start_server --filter=log memory logfile="$tmp/a.log" size=1M logappend=false
[ "$(nbdinfo --size "$uri")" -eq 1048576 ] || fail "size"
grep -q ' Ready thread_model=' "$tmp/a.log" || fail "no Ready line"

"${server_cmd[@]}" --filter=log memory --help > "$tmp/help" 2>&1 || fail "--help failed"
for p in 'logfile=<FILE>' 'logappend=<BOOL>' 'logscript=<SCRIPT>'; do
    grep -qF -- "$p" "$tmp/help" || fail "--help does not list $p"
done
echo OK

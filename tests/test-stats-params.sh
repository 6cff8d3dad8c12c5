#!/usr/bin/env bash
# The stats filter's parameters: statsfile is required; a bad statsappend or statsthreshold
# value (not a number, a fraction, outside 0 to 100) or a stats file that cannot be created
# stops the server before it listens, with exit status 1 and a message naming the parameter and
# the value (or the file); --help lists the parameters.
#
# Fails against nbdkit 1.32: its messages do not name the parameter and the value
# ("could not decipher boolean (maybe)", "printing threshold: could not parse number",
# "statsthreshold must be between 0 and 100 (percent)").
source "$(dirname "$0")/lib/functions.sh"


f="$tmp/stats.txt"
bad_args --filter=stats memory 1M -- statsfile
bad_args --filter=stats memory 1M statsfile="$f" statsappend=maybe -- statsappend maybe
bad_args --filter=stats memory 1M statsfile="$f" statsthreshold=101 -- statsthreshold 101
bad_args --filter=stats memory 1M statsfile="$f" statsthreshold=-1 -- statsthreshold -1
bad_args --filter=stats memory 1M statsfile="$f" statsthreshold=abc -- statsthreshold abc
bad_args --filter=stats memory 1M statsfile="$f" statsthreshold=50.5 -- statsthreshold 50.5
bad_args --filter=stats memory 1M statsfile="$tmp/no/such/dir/s.txt" -- "$tmp/no/such/dir/s.txt"
[ ! -e "$f" ] || fail "a stats file was created although the command line was refused"

"${server_cmd[@]}" --filter=stats memory --help > "$tmp/help" 2>&1 || fail "--help failed"
for p in 'statsfile=<FILE>' 'statsappend=<BOOL>'; do
    grep -qF -- "$p" "$tmp/help" || fail "--help does not list $p"
done
echo OK

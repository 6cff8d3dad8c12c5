#!/usr/bin/env bash
# How the nbd plugin finds the server below and its export, each way checked against the server
# below: hostname= and port= over TCP, nbd:// URIs (also as the bare magic parameter), socket=
# with export=, nbd+unix:// with the export in the path, dynamic-export=true passing each
# client's export name through (the info plugin below serves the name it was asked for) and
# listing the exports of the server below (file dir=), retry=
# waiting for a server that starts late; and parameter errors that stop it before it listens.
source "$(dirname "$0")/lib/functions.sh"

port=$(free_tcp_port)
"${server_cmd[@]}" -f -p "$port" -i 127.0.0.1 info exportname </dev/null >"$tmp/tcp.log" 2>&1 &
server_pids+=($!)
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$port/x" >/dev/null 2>&1 && break; sleep 0.1; done
name_through() {   # name_through URI: the disk as text
    nbdsh -u "$1" -c 'import sys; sys.stdout.write(h.pread(h.get_size(), 0).decode())'
}

start_server nbd hostname=127.0.0.1 port="$port" export=over-tcp
[ "$(name_through "$uri")" = over-tcp ] || fail "hostname= port= export=: $(name_through "$uri")"
start_server nbd "nbd://127.0.0.1:$port/from%20uri"
[ "$(name_through "$uri")" = "from uri" ] || fail "bare nbd:// URI: $(name_through "$uri")"
start_server nbd uri="nbd://127.0.0.1:$port/dyn" dynamic-export=true
[ "$(name_through "${uri/\/\?/\/client-a?}")" = client-a ] || fail "dynamic-export: client-a"
[ "$(name_through "${uri/\/\?/\/client-b?}")" = client-b ] || fail "dynamic-export: client-b"

start_server info exportname
below=$sock
start_server nbd socket="$below" export=by-socket
[ "$(name_through "$uri")" = by-socket ] || fail "socket= export="
start_server nbd "nbd+unix:///in-path?socket=$below"
[ "$(name_through "$uri")" = in-path ] || fail "nbd+unix:// export"
# Whatever the client asks for, without dynamic-export the configured export is opened.
[ "$(name_through "${uri/\/\?/\/ignored?}")" = in-path ] || fail "the client's export name leaked through"

# dynamic-export=true lists the exports of the server below (file dir=: one per file), and each
# serves its own file.
mkdir "$tmp/dir"
printf 'first file' > "$tmp/dir/one"
printf 'second file' > "$tmp/dir/two"
start_server file dir="$tmp/dir"
dir_below=$sock
start_server nbd socket="$dir_below" dynamic-export=true
nbdinfo --list --json "nbd+unix:///?socket=$dir_below" | grep export-name | sort > "$tmp/below.list"
nbdinfo --list --json "$uri" | grep export-name | sort > "$tmp/ours.list"
diff -u "$tmp/below.list" "$tmp/ours.list" || fail "the export list differs from the server below's"
grep -q '"two"' "$tmp/ours.list" || fail "no export 'two' listed: $(cat "$tmp/ours.list")"
[ "$(name_through "${uri/\/\?/\/two?}")" = "second file" ] || fail "dynamic export 'two'"

# retry=: the server below starts two seconds after the proxy, which has shared=true and so
# connects at start-up.
late="$tmp/late.sock"
(sleep 2; exec "${server_cmd[@]}" -f -U "$late" memory 1M) </dev/null >"$tmp/late.log" 2>&1 &
server_pids+=($!)
start_server nbd socket="$late" shared=true retry=10
[ "$(nbdinfo --size "$uri")" = 1048576 ] || fail "retry=: wrong size"
bad_args nbd socket="$tmp/never.sock" shared=true retry=1 -- "nbd:" "$tmp/never.sock" "connecting"

bad_args nbd -- "exactly one of uri=, socket=, hostname=, vsock= or command= is required"
bad_args nbd socket=/a hostname=b -- "exactly one of"
bad_args nbd nbd://h/x export=y -- "export= cannot be used with uri=nbd://h/x"
bad_args nbd http://h/x -- "nbd: uri=http://h/x: unknown scheme"
bad_args nbd 'nbd+unix:///x' -- "socket=PATH query is required"
bad_args nbd socket=/s port=1 -- "port="
bad_args nbd socket=/s tls=maybe -- "tls=maybe"
bad_args nbd socket=/s retry=x -- "retry"
bad_args nbd socket=/s shared=true dynamic-export=true -- "dynamic-export=true cannot be used"
bad_args nbd nbds://h/ tls=off -- "tls=off cannot be used with an nbds:// URI"
bad_args nbd socket=/s colour=red -- "unknown parameter 'colour'"
echo OK

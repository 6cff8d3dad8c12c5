# Shared helpers for the shell end-to-end tests.  Source it first thing:
#
#   source "$(dirname "$0")/lib/functions.sh"
#   start_server memory 1G          # $NBDFORGE -f -U $sock memory 1G, waits until it listens
#   qemu-io -f raw "$uri" -c ...     # $sock, $uri, $server_pid are set
#
# The server under test is $NBDFORGE (default: the repository's target/release/nbdforge); it may
# be a command with arguments.  Every test gets a private temporary directory $tmp; servers are
# started on Unix sockets inside it, so tests can run in parallel.  On exit, all servers started
# here are stopped and $tmp is removed; if the test failed, the servers' stderr is printed.

set -euo pipefail

# nbdsh runs "python3" from PATH and needs the system one, which has the nbd module.
export PATH="/usr/bin:$PATH"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${NBDFORGE:=${CARGO_TARGET_DIR:-$repo/target}/release/nbdforge}"
read -r -a server_cmd <<< "$NBDFORGE"
export NBDFORGE
export PYTHONDONTWRITEBYTECODE=1

tmp="$(mktemp -d "${TMPDIR:-/tmp}/nbdforge-test.XXXXXX")"
# Every process this test starts carries its directory in the environment, so that cleanup can
# tell its own servers from unrelated processes that reuse a pid of theirs after they exited
# (pids wrap at 32768, and the suite runs tests in parallel).
export NBDFORGE_TEST_DIR="$tmp"
server_pids=()
server_logs=()
server_count=0

# ours PID: whether PID is a process this test started (see NBDFORGE_TEST_DIR).
ours() {
    tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF "NBDFORGE_TEST_DIR=$tmp"
}

cleanup() {
    local status=$?
    local pid
    for pid in "${server_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null && ours "$pid"; then
            kill -TERM "$pid" 2>/dev/null || :
            # Give it a moment, then insist.
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -KILL "$pid" 2>/dev/null || :
        fi
    done
    if [ "$status" -ne 0 ]; then
        local log
        for log in "${server_logs[@]}"; do
            echo "--- $log ---" >&2
            cat "$log" >&2 || :
        done
        echo "FAIL: $(basename "$0") (exit status $status)" >&2
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# wait_for_socket PATH PID: wait up to 30 s until the server PID accepts connections on PATH.
wait_for_socket() {
    python3 "$repo/tests/lib/wait_socket.py" "$1" "$2" 30 || fail "server did not start"
}

# start_server [SERVER OPTIONS...] PLUGIN [ARGS...]: runs $NBDFORGE -f -U SOCK ... in the
# background on a fresh socket and waits for it.  Sets sock, uri, server_pid, server_log.
start_server() {
    server_count=$((server_count + 1))
    sock="$tmp/nbd$server_count.sock"
    uri="nbd+unix:///?socket=$sock"
    server_log="$tmp/server$server_count.log"
    "${server_cmd[@]}" -f -U "$sock" "$@" </dev/null >"$server_log" 2>&1 &
    server_pid=$!
    server_pids+=("$server_pid")
    server_logs+=("$server_log")
    wait_for_socket "$sock" "$server_pid"
}

# wait_exit PID WHAT [SECONDS]: the process PID ends within SECONDS (10), or the test fails saying
# WHAT is still running; sets exit_status to its exit status (127 if it is not this shell's child).
wait_exit() {
    local i
    for ((i = 0; i < ${3:-10} * 10; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$1" 2>/dev/null && fail "$2: still running after ${3:-10} s"
    exit_status=0
    wait "$1" 2>/dev/null || exit_status=$?
}

# stop_server PID [SIGNAL]: signal the server and wait; sets stop_status to its exit status.
stop_server() {
    local pid=$1 sig=${2:-TERM}
    kill -"$sig" "$pid"
    wait_exit "$pid" "server (pid $pid), sent SIG$sig," 30
    stop_status=$exit_status
}

# expect_fail CMD...: CMD must exit non-zero.
expect_fail() {
    if "$@"; then
        fail "expected failure: $*"
    fi
}

# same_file A B: byte-for-byte comparison.
same_file() {
    cmp "$1" "$2" || fail "$1 and $2 differ"
}

# served_is FILE [writable]: the running server ($uri) serves exactly FILE: copied whole with
# nbdcopy, and read at random offsets and lengths with nbdsh (each read may start and end
# mid-block, also when the server advertises a minimum block size: libnbd's alignment check is
# off); read-only unless "writable" is given.
served_is() {
    rm -f "$tmp/served.out"
    nbdcopy "$uri" "$tmp/served.out"
    same_file "$1" "$tmp/served.out"
    ORIG="$1" WRITABLE="${2:-}" nbdsh -c 'h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)' \
        -c "h.connect_uri('$uri')" -c '
import os, random
data = open(os.environ["ORIG"], "rb").read()
assert h.get_size() == len(data), (h.get_size(), len(data))
assert h.is_read_only() == (os.environ["WRITABLE"] != "writable")
rng = random.Random(7)
for _ in range(200):
    off = rng.randrange(len(data))
    n = rng.randint(1, min(len(data) - off, 3 << 20))
    assert h.pread(n, off) == data[off:off + n], (off, n)
'
}

# random_file PATH SIZE: SIZE (e.g. 64M) bytes of random data.
random_file() {
    head -c "$2" /dev/urandom > "$1"
    [ "$(stat -c %s "$1")" -eq "$(numfmt --from=iec "$2")" ] || fail "could not create $1"
}

# unix_socket_paths PID: the filesystem paths of the Unix sockets process PID has open (found by
# matching the inodes of its socket fds against /proc/net/unix).
unix_socket_paths() {
    local pid=$1 inodes
    inodes=$(find "/proc/$pid/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null |
             sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p' | sort -u)
    [ -n "$inodes" ] || return 0
    awk -v inodes="$inodes" '
        BEGIN { n = split(inodes, list, "\n"); for (i = 1; i <= n; i++) want[list[i]] = 1 }
        NR > 1 && ($7 in want) && $8 != "" { print $8 }' /proc/net/unix
}

# free_tcp_port: a TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
free_tcp_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- nbdforge-img and qemu-nbd, side by side -------------------------------------------------

: "${NBDFORGE_IMG:=${CARGO_TARGET_DIR:-$repo/target}/release/nbdforge-img}"
export NBDFORGE_IMG

# start_img [OPTIONS...] FILE: runs $NBDFORGE_IMG -k SOCK OPTIONS... FILE (qemu-nbd's command
# line) in the background and waits for it. Sets sock, uri, server_pid, server_log.
start_img() { start_qemu_style "$NBDFORGE_IMG" "$@"; }

# start_qemu_nbd [OPTIONS...] FILE: the same with qemu-nbd, the reference.
start_qemu_nbd() { start_qemu_style qemu-nbd "$@"; }

# img_session START FILE OPTIONS...: START (start_img or start_qemu_nbd) serves FILE with
# `-f qcow2 OPTIONS...`, the qemu-io commands in the array `session` run over it, and the server,
# started without -t, must exit by itself once its client has gone (having flushed).
img_session() {
    local start=$1 file=$2
    shift 2
    "$start" -f qcow2 "$@" "$file"
    qemu-io -f raw "$uri" "${session[@]}" > session.out || fail "$file: qemu-io failed: $(cat session.out)"
    wait_exit "$server_pid" "$start $file, its client gone,"
    [ "$exit_status" -eq 0 ] || fail "$start $file: exit status $exit_status"
}

# fio_qcow2_check IMAGE...: for each, nbdforge-img serves it, fio_verify writes and verifies,
# the server stops on SIGTERM with status 0 and `qemu-img check` finds the image clean.
fio_qcow2_check() {
    local image
    for image in "$@"; do
        start_img -t -e 0 -f qcow2 "$image"
        fio_verify > "fio-$image.out" || { cat "fio-$image.out"; fail "$image: fio"; }
        stop_server "$server_pid"
        [ "$stop_status" -eq 0 ] || fail "$image: exit status $stop_status after SIGTERM"
        qemu-img check -q "$image" || fail "$image: qemu-img check is not clean after fio"
        echo "fio verified, check clean: $image"
    done
}

# same_image_as_qemu_nbd FILE OPTIONS...: nbdforge-img and qemu-nbd serve qcow2 FILE with the
# same OPTIONS; with -s, the qemu-io commands in the array `session` run on both first. The
# exports must be identical (qemu-img compare) with the same base:allocation and
# qemu:allocation-depth maps (give -A). Leaves ours.map and ours.depth.
same_image_as_qemu_nbd() {
    local file=$1 ours theirs u
    shift
    start_img -t -e 0 -f qcow2 "$@" "$file"
    ours=$uri
    start_qemu_nbd -t -e 0 -f qcow2 "$@" "$file"
    theirs=$uri
    if [[ " $* " == *" -s "* ]]; then
        for u in "$ours" "$theirs"; do
            qemu-io -f raw "$u" "${session[@]}" >/dev/null || fail "$file: qemu-io session on $u"
        done
    fi
    qemu-img compare -f raw -F raw "$ours" "$theirs" || fail "$file $*: the disks differ"
    nbdinfo --map "$ours" > ours.map
    nbdinfo --map "$theirs" > theirs.map
    diff -u theirs.map ours.map || fail "$file $*: base:allocation differs from qemu-nbd's"
    nbdinfo --map=qemu:allocation-depth "$ours" > ours.depth
    nbdinfo --map=qemu:allocation-depth "$theirs" > theirs.depth
    diff -u theirs.depth ours.depth || fail "$file $*: qemu:allocation-depth differs from qemu-nbd's"
    stop_server "${server_pids[-2]}"
    stop_server "${server_pids[-1]}"
    echo "same as qemu-nbd: $file $*"
}

# img_refuses [--both-say] ARGS... -- EXPECTED...: nbdforge-img and qemu-nbd both refuse ARGS
# (after `-k SOCKET`) with exit status 1, ours before creating its socket, and our message says
# every EXPECTED (with --both-say, qemu-nbd's too). Prints both messages' first lines.
img_refuses() {
    local both= args=() who cmd status s
    [ "$1" = --both-say ] && { both=1; shift; }
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    for who in theirs ours; do
        cmd=qemu-nbd
        [ "$who" = ours ] && cmd=$NBDFORGE_IMG
        status=0
        timeout 20 "$cmd" -k "$tmp/refused.sock" "${args[@]}" >"$tmp/refused.out" 2>"$tmp/refused.$who" \
            </dev/null || status=$?
        [ "$status" -eq 1 ] || fail "$cmd ${args[*]}: exit status $status, want 1: $(cat "$tmp/refused.$who")"
        # (qemu-nbd leaves its socket behind when the image does not open; ours never binds.)
        [ "$who" = theirs ] || [ ! -e "$tmp/refused.sock" ] || fail "$cmd ${args[*]}: the socket was created"
        rm -f "$tmp/refused.sock"
        [ "$who" = ours ] || [ -n "$both" ] || continue
        for s in "$@"; do
            grep -qF -- "$s" "$tmp/refused.$who" ||
                fail "$cmd ${args[*]}: the message does not say '$s': $(cat "$tmp/refused.$who")"
        done
    done
    echo "${args[*]}: $(grep -v warning "$tmp/refused.theirs" | head -1) / ours: $(grep -v warning "$tmp/refused.ours" | head -1)"
}

start_qemu_style() {
    local cmd=$1
    shift
    server_count=$((server_count + 1))
    sock="$tmp/nbd$server_count.sock"
    uri="nbd+unix:///?socket=$sock"
    server_log="$tmp/server$server_count.log"
    "$cmd" -k "$sock" "$@" </dev/null >"$server_log" 2>&1 &
    server_pid=$!
    server_pids+=("$server_pid")
    server_logs+=("$server_log")
    wait_listening "$sock" "$server_pid"
}

# wait_listening PATH PID: like wait_for_socket, without connecting (a client that comes and goes
# ends a qemu-nbd without -t): waits for a listening socket at PATH in /proc/net/unix.
wait_listening() {
    local i
    for ((i = 0; i < 300; i++)); do
        awk -v p="$1" '$8 == p && $4 == "00010000" { found = 1 } END { exit !found }' /proc/net/unix && return 0
        kill -0 "$2" 2>/dev/null || fail "server (pid $2) exited before listening on $1"
        sleep 0.1
    done
    fail "server (pid $2) did not listen on $1 within 30 s"
}

# --- TLS credentials, made by the test itself (certtool and psktool, from gnutls-bin) --------

# Keys and certificates in $tmp as NAME-key.pem, NAME-cert.pem. RSA keys: qemu insists that a
# client certificate allows key encipherment, which certtool only grants to RSA keys.
gen_key() { certtool --generate-privkey --key-type=rsa --bits=2048 --outfile "$1" 2>/dev/null; }
gen_ca() {   # gen_ca NAME CN
    gen_key "$tmp/$1-key.pem"
    printf 'cn = %s\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 2\n' "$2" > "$tmp/$1.info"
    certtool --generate-self-signed --load-privkey "$tmp/$1-key.pem" --template "$tmp/$1.info" \
        --outfile "$tmp/$1-cert.pem" 2>/dev/null
}
gen_cert() {   # gen_cert NAME CA TEMPLATE
    gen_key "$tmp/$1-key.pem"
    printf '%b' "$3" > "$tmp/$1.info"
    certtool --generate-certificate --load-ca-certificate "$tmp/$2-cert.pem" \
        --load-ca-privkey "$tmp/$2-key.pem" --load-privkey "$tmp/$1-key.pem" \
        --template "$tmp/$1.info" --outfile "$tmp/$1-cert.pem" 2>/dev/null
}
server_info='organization = nbdforge test\ncn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n'

# server_pki DIR CLIENT_DIR: a CA and a server certificate for localhost in the layout of
# nbdkit-tls(1) (DIR/ca-cert.pem, server-cert.pem, server-key.pem), and in CLIENT_DIR what a
# client needs to trust the server: the CA certificate.
server_pki() {
    gen_ca pki-ca "nbdforge test CA"
    gen_cert pki-server pki-ca "$server_info"
    mkdir -p -m 0700 "$1" "$2"
    cp "$tmp/pki-ca-cert.pem" "$1/ca-cert.pem"
    cp "$tmp/pki-server-cert.pem" "$1/server-cert.pem"
    cp "$tmp/pki-server-key.pem" "$1/server-key.pem"
    cp "$tmp/pki-ca-cert.pem" "$2/ca-cert.pem"
}

# fio_verify: fio's NBD engine (libnbd) against $uri: random 4 KiB writes over 64 MiB with 16 in
# flight and crc32c verification of every block, then mixed reads and writes from two jobs (two
# connections) at once, also verified. Fails on any error or verification failure.
fio_verify() {
    (
        cd "$tmp"   # fio writes its state files in the current directory
        fio --name=randwrite --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --size=64M \
            --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
            --output="$tmp/fio.out"
        cat "$tmp/fio.out"
        grep -Eq 'err= *0' "$tmp/fio.out" || fail "fio reported errors"
        grep -Eiq 'verify.*(fail|bad)|crc32c.*fail' "$tmp/fio.out" && fail "fio verification failed"
        fio --name=mixed --ioengine=nbd --uri="$uri" --rw=randrw --bs=64k --size=32M --numjobs=2 \
            --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
            --offset_increment=32M --output="$tmp/fio2.out"
        cat "$tmp/fio2.out"
        [ "$(grep -Ec 'err= *0' "$tmp/fio2.out")" -eq 2 ] || fail "fio mixed jobs reported errors"
    )
}

# fio_unaligned_verify [SIZE]: fio's NBD engine against $uri with 32 requests in flight, sizes
# from 512 bytes to 64 KiB at any 512-byte boundary (so most requests cover blocks of the layer
# under test only in part): random writes over SIZE (default 32M), every one verified with
# crc32c afterwards; then two jobs (two connections) at once, each mixing such reads and writes in
# its own half, also verified.  Fails on any error or verification failure.
fio_unaligned_verify() {
    local size=${1:-32M} half
    half=$(( $(numfmt --from=iec "$size") / 2 ))
    (
        cd "$tmp"   # fio writes its state files in the current directory
        local common=(--ioengine=nbd --uri="$uri" --bsrange=512-64k --blockalign=512 --iodepth=32
                      --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0)
        fio --name=unaligned "${common[@]}" --rw=randwrite --size="$size" --output="$tmp/fio.out"
        cat "$tmp/fio.out"
        grep -Eq 'err= *0' "$tmp/fio.out" || fail "fio reported errors"
        grep -Eiq 'verify.*(fail|bad)|crc32c.*fail' "$tmp/fio.out" && fail "fio verification failed"
        fio --name=mixed "${common[@]}" --rw=randrw --size="$half" --numjobs=2 --offset_increment="$half" \
            --output="$tmp/fio2.out"
        cat "$tmp/fio2.out"
        [ "$(grep -Ec 'err= *0' "$tmp/fio2.out")" -eq 2 ] || fail "fio mixed jobs reported errors"
    )
}

# overlapping_writes [ROUNDS]: rounds of overlapping writes in flight together over two
# connections to $uri; each sector must end up whole, from one of the round's writes covering it
# (see tests/lib/overlap.py).
overlapping_writes() {
    python3 "$repo/tests/lib/overlap.py" "$uri" "${1:-100}" || fail "overlapping writes tore or were lost"
}

# --- Comparing with nbdkit --------------------------------------------------------------------

# The reference the synthetic plugins are compared with (a command, as $NBDFORGE may be).
: "${NBDKIT_REFERENCE:=nbdkit}"

# start_reference [SERVER OPTIONS...] PLUGIN [ARGS...]: start_server, with nbdkit.
start_reference() {
    local saved=("${server_cmd[@]}")
    read -r -a server_cmd <<< "$NBDKIT_REFERENCE"
    start_server "$@"
    server_cmd=("${saved[@]}")
}

# same_as_nbdkit PLUGIN [ARGS...]: the disk the server under test serves for this command line
# is, byte for byte, the one nbdkit serves (each copied out with nbdcopy, compared with cmp).
same_as_nbdkit() {
    rm -f "$tmp/ours.img" "$tmp/theirs.img"
    start_server "$@"
    nbdcopy "$uri" "$tmp/ours.img"
    stop_server "$server_pid"
    start_reference "$@"
    nbdcopy "$uri" "$tmp/theirs.img"
    stop_server "$server_pid"
    cmp "$tmp/ours.img" "$tmp/theirs.img" || fail "$*: the disk differs from nbdkit's"
    echo "same as nbdkit ($(stat -c %s "$tmp/ours.img") bytes): $*"
}

# bad_args WORDS... -- EXPECTED-STRINGS...: the server run with WORDS exits 1 before listening
# (the socket is never created), with every expected string in its message.
bad_args() {
    local args=() status=0 s
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    local sock="$tmp/bad.sock"
    timeout 20 "${server_cmd[@]}" -f -U "$sock" "${args[@]}" >"$tmp/out" 2>"$tmp/err" </dev/null ||
        status=$?
    echo "${args[*]}: exit $status: $(cat "$tmp/err")"
    [ "$status" -eq 1 ] || fail "${args[*]}: exit status $status, want 1"
    [ ! -e "$sock" ] || fail "${args[*]}: socket was created"
    [ -s "$tmp/err" ] || fail "${args[*]}: no message on stderr"
    for s in "$@"; do
        grep -qF -- "$s" "$tmp/err" || fail "${args[*]}: message does not mention '$s'"
    done
}

# plugin_describes_itself PLUGIN MAGIC-KEY HELP-TEXT: `PLUGIN --help` shows HELP-TEXT (one of its
# parameters) and `PLUGIN --dump-plugin` gives its name and magic key, as nbdkit prints them.
plugin_describes_itself() {
    "${server_cmd[@]}" "$1" --help > "$tmp/help"
    grep -qF -- "$3" "$tmp/help" || fail "$1 --help does not show '$3': $(cat "$tmp/help")"
    "${server_cmd[@]}" "$1" --dump-plugin > "$tmp/dump"
    grep -qx "name=$1" "$tmp/dump" || fail "$1 --dump-plugin: no name=$1: $(cat "$tmp/dump")"
    grep -qx "magic_config_key=$2" "$tmp/dump" || fail "$1 --dump-plugin: no magic key $2: $(cat "$tmp/dump")"
}

# --- Comparing with nbdkit, the peer ------------------------------------------------------------

# start_nbdkit ARGS...: like start_server, but runs nbdkit with the same arguments, so a test can
# check that the server under test behaves as nbdkit does.  Sets peer_uri (and sock, uri, ...
# as start_server does: start the server under test after it).
start_nbdkit() {
    local saved=("${server_cmd[@]}")
    server_cmd=(nbdkit)
    start_server "$@"
    server_cmd=("${saved[@]}")
    peer_uri=$uri
}

# same_served_as_nbdkit ARGS...: serves ARGS with nbdkit and with the server under test, copies both
# exports with nbdcopy and compares the copies byte for byte.  Leaves the server under test
# running ($uri) and its copy in $tmp/ours.out.
same_served_as_nbdkit() {
    start_nbdkit "$@"
    start_server "$@"
    rm -f "$tmp/nbdkit.out" "$tmp/ours.out"
    nbdcopy "$peer_uri" "$tmp/nbdkit.out"
    nbdcopy "$uri" "$tmp/ours.out"
    same_file "$tmp/nbdkit.out" "$tmp/ours.out"
}

# export_flags URI FIELD...: the export's size or flags as libnbd reports them, one line, for
# comparing two servers: export_flags "$uri" can_zero can_fast_zero is_rotational.
export_flags() {
    local uri=$1
    shift
    FIELDS="$*" nbdsh -u "$uri" -c '
import os
print(" ".join("%s=%s" % (f, getattr(h, f)()) for f in os.environ["FIELDS"].split()))'
}

# same_flags_as_nbdkit FIELDS -- ARGS...: the listed export_flags fields are the same when
# nbdkit and the server under test serve ARGS.  Prints them.
same_flags_as_nbdkit() {
    local fields=()
    while [ "$1" != -- ]; do fields+=("$1"); shift; done
    shift
    start_nbdkit "$@"
    start_server "$@"
    local theirs ours
    theirs=$(export_flags "$peer_uri" "${fields[@]}")
    ours=$(export_flags "$uri" "${fields[@]}")
    echo "$*: $ours"
    [ "$theirs" = "$ours" ] || fail "$*: nbdkit has $theirs, we have $ours"
}

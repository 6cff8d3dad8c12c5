#!/usr/bin/env bash
# What goes wrong in a Python plugin: each broken script or bad parameter stops the server before
# it listens (exit 1) with a message naming the script and the fault, as it stops nbdkit's python
# plugin (but for a thread_model() that returns nonsense, which nbdkit 1.32 accepts); an exception in a request fails that request with EIO (or the errno of set_error) and
# the traceback goes to the log, and the connection goes on.
source "$(dirname "$0")/lib/functions.sh"

plugin() {   # plugin NAME: a script from standard input, with the three required callbacks after it
    { cat; printf 'def open(r): return 1\ndef get_size(h): return 512\ndef pread(h, b, o, f): b[:] = bytes(len(b))\n'; } > "$tmp/$1"
}
# refused ARGS... -- STRINGS...: ours says all STRINGS; nbdkit refuses the same command line too.
refused() {
    bad_args "$@"
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    if nbdkit -U - "${args[@]}" --run true >/dev/null 2>&1; then
        fail "nbdkit accepts ${args[*]}"
    fi
}

echo 'API_VERSION = 2' | plugin ok.py
printf 'def open(readonly):\n    return 1\n' > "$tmp/partial.py"
printf 'def open(readonly:\n' > "$tmp/syntax.py"
printf 'import no_such_module_here\n' | plugin import.py
printf 'API_VERSION = 3\n' | plugin v3.py
printf 'def config(k, v):\n    raise ValueError("no such key: " + k)\n' | plugin config.py
printf 'def config_complete():\n    raise RuntimeError("incomplete")\n' | plugin complete.py
printf 'def thread_model():\n    return 7\n' | plugin model.py
printf 'def get_ready():\n    raise RuntimeError("not ready")\n' | plugin ready.py

refused python -- "script parameter is required"
refused python "$tmp/missing.py" -- "missing.py" "cannot open file"
refused python script="$tmp/partial.py" -- "partial.py" "'open', 'get_size' or 'pread'"
refused python "$tmp/syntax.py" -- "syntax.py" "error running this script" "SyntaxError"
refused python "$tmp/import.py" -- "import.py" "No module named 'no_such_module_here'"
refused python "$tmp/v3.py" -- "v3.py" "API_VERSION=3"
refused python "$tmp/ok.py" colour=blue -- "colour=blue" "does not need command line configuration"
refused python "$tmp/config.py" colour=blue -- "colour=blue" "config.py" "config" "no such key: colour"
refused python "$tmp/complete.py" -- "complete.py" "config_complete" "incomplete"
bad_args python "$tmp/model.py" -- "model.py" "thread_model returned 7"   # nbdkit 1.32 lets it pass
refused python "$tmp/ready.py" -- "ready.py" "get_ready" "not ready"
grep -q "Traceback" "$tmp/err" || fail "no traceback for the get_ready exception"
bad_args python file="$tmp/ok.py" -- "file=" "the first parameter must be script="

# An exception in a request: EIO, or the errno the script gave set_error; the traceback in the
# log; the next request is served.
cat > "$tmp/failing.py" <<'SCRIPT'
import errno
import nbdkit
API_VERSION = 2
def open(readonly):
    return 1
def get_size(h):
    return 1 << 20
def helper(offset):
    if offset == 0:
        raise ZeroDivisionError("offset zero")
    if offset == 512:
        nbdkit.set_error(errno.EPERM)
        raise PermissionError("offset 512 is not yours")
def pread(h, buf, offset, flags):
    helper(offset)
    buf[:] = b"x" * len(buf)
def pwrite(h, buf, offset, flags):
    nbdkit.set_error(errno.ENOSPC)
    raise OSError("full")
SCRIPT
start_server python "$tmp/failing.py"
nbdsh -u "$uri" -c '
import errno
for offset, want in ((0, errno.EIO), (512, errno.EPERM)):
    try:
        h.pread(512, offset)
        raise SystemExit("pread at %d succeeded" % offset)
    except nbd.Error as e:
        assert e.errnum == want, (offset, e)
assert h.pread(512, 1024) == b"x" * 512
try:
    h.pwrite(b"y" * 512, 0)
    raise SystemExit("pwrite succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
assert h.pread(512, 0 + 2048) == b"x" * 512
'
cat "$server_log"
grep -q 'in helper' "$server_log" || fail "the log lacks the traceback"
grep -q "ZeroDivisionError: offset zero" "$server_log" || fail "the log lacks the exception"
grep -q "PermissionError: offset 512 is not yours" "$server_log" || fail "the log lacks the second exception"

# block_size answers nbdkit refuses, refused alike (the export does not open, the log says why);
# and one it accepts.
for sizes in "(512, 256, 4096)" "(512, 4096, 1000)" "(512, 8192, 4096)" "(1 << 17, 1 << 17, 1 << 17)" \
             "(2, 4096, 0xffffffff)"; do
    printf 'API_VERSION = 2\ndef block_size(h):\n    return %s\n' "$sizes" | plugin bs.py
    ours=0 theirs=0
    "${server_cmd[@]}" -U - python "$tmp/bs.py" --run 'nbdinfo $uri' >/dev/null 2>"$tmp/err" || ours=$?
    nbdkit -U - python "$tmp/bs.py" --run 'nbdinfo $uri' >/dev/null 2>&1 || theirs=$?
    echo "block_size $sizes: nbdforge $ours, nbdkit $theirs"
    [ "$ours" -eq "$theirs" ] || fail "block_size $sizes: exit $ours, nbdkit $theirs"
    [ "$ours" -eq 0 ] || grep -q "block_size returned" "$tmp/err" || fail "block_size $sizes: $(cat "$tmp/err")"
done

#!/usr/bin/env bash
# curl plugin over plain HTTP against nginx started here: the disk read with nbdcopy is the file
# byte for byte and the same as nbdkit's curl plugin serves; connections=4 with a 4-connection
# nbdcopy; the size from a GET when HEAD is refused; a redirect followed by default and refused with followlocation=false; a server that
# ignores Range (200 with the whole body) refused with a clear error, at open when it says so,
# on the read when it lies; writes are PUTs with Content-Range, refused here with EIO.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/nginx.sh"

random_file "$www/disk.img" 24M
nginx_start "
    location = /moved { return 302 /disk.img; }
    location = /nohead { if (\$request_method = HEAD) { return 405; } alias $www/disk.img; }
    location = /norange { max_ranges 0; alias $www/disk.img; }
    location = /liar { max_ranges 0; add_header Accept-Ranges bytes; alias $www/disk.img; }
"

# Byte for byte: against the file, and against nbdkit's curl plugin on the same command line.
same_served_as_nbdkit -r curl "$http_url/disk.img"
same_file "$tmp/ours.out" "$www/disk.img"
nginx_log | grep -q "GET /disk.img 206 range=bytes=" || fail "no ranged GET reached nginx"

# The magic parameter and url= are the same; nbdinfo sees the size from HEAD.
start_server -r curl url="$http_url/disk.img" connections=4
[ "$(nbdinfo --size "$uri")" -eq $((24 * 1024 * 1024)) ] || fail "wrong size"
: > "$tmp/nginx/access.log"
nbdcopy --connections=4 --requests=16 "$uri" - | cmp - "$www/disk.img" || fail "connections=4 copy differs"
echo "ranged GETs with connections=4: $(nginx_log | grep -c ' 206 ')"
[ "$(nginx_log | grep -c ' 206 ')" -ge 24 ] || fail "too few ranged GETs"
nginx_log | grep -v ' 206 ' | grep -v '^HEAD ' && fail "a request other than HEAD or a ranged GET"

# A server refusing HEAD: the size comes from a GET cut off after its headers.
: > "$tmp/nginx/access.log"
start_server -r curl "$http_url/nohead"
[ "$(nbdinfo --size "$uri")" -eq $((24 * 1024 * 1024)) ] || fail "wrong size without HEAD"
nginx_log
nginx_log | head -2 | tr '\n' ' ' | grep -q "^HEAD /nohead 405 .*GET /nohead 200 range=- " ||
    fail "no HEAD then GET for the size"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy without HEAD differs"

# A redirect: followed by default, an error naming the status with followlocation=false.
start_server -r curl "$http_url/moved"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "redirected copy differs"
start_server -r curl "$http_url/moved" followlocation=false
expect_fail nbdinfo "$uri" 2>"$tmp/nbdinfo.err"
grep -F "curl: $http_url/moved: getting the size: HTTP/1.1 302" "$server_log" || fail "no message naming the 302"

# A server without ranges is refused when the client connects, one that claims ranges but
# sends the whole body fails the read with EIO; the server stays up either way.
start_server -r curl "$http_url/norange"
expect_fail nbdinfo "$uri" 2>/dev/null
grep -F "curl: $http_url/norange: getting the size: the server does not support byte ranges" "$server_log" ||
    fail "no message about byte ranges"
start_server -r curl "$http_url/liar"
read_fails_with_eio 4096 8192
grep -F "curl: $http_url/liar: GET bytes 8192-12287: the server ignored the range and sent the whole file (HTTP 200)" \
    "$server_log" || fail "no message about the ignored range"
kill -0 "$server_pid" || fail "the server died"

# Writes: a PUT of the range with Content-Range; nginx (no WebDAV here) answers 405, so EIO.
start_server curl "$http_url/disk.img"
nbdsh -u "$uri" -c '
assert not h.is_read_only()
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("a write nginx cannot take succeeded")
except nbd.Error as e:
    print("write refused:", e.string)
    assert e.errno == "EIO", e.errno
'
grep -F "curl: $http_url/disk.img: PUT bytes 0-511: HTTP/1.1 405" "$server_log" || fail "no message naming the 405"
nginx_log | grep -q "^PUT /disk.img 405" || fail "the PUT did not reach nginx"
same_file <(nbdcopy "$uri" -) "$www/disk.img"
# --help describes the parameters; --dump-plugin names the magic key and libcurl's HTTP/2.
"${server_cmd[@]}" curl --help > "$tmp/help"
grep -q -- 'header-script=' "$tmp/help" || fail "curl --help does not describe header-script="
"${server_cmd[@]}" curl --dump-plugin > "$tmp/dump"
grep -qx 'magic_config_key=url' "$tmp/dump" || fail "no magic_config_key=url"
grep -qx 'curl_http2=yes' "$tmp/dump" || fail "libcurl without HTTP/2"
bad_args curl -- "url=URL parameter is required"
bad_args curl "$http_url/disk.img" connections=0 -- "connections=0"
echo "test-curl-http: ok"

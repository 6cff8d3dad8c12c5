#!/usr/bin/env bash
# curl plugin over HTTPS against nginx with a certificate from a CA made here: cainfo= trusts it,
# sslverify=false skips the check, another CA fails the connection with libcurl's verification
# error; HTTP/2 over TLS (nginx's http2) is used by default and by http-version=2TLS, and
# http-version=1.1 stays on HTTP/1.1, as nginx's access log shows; the disk is the file byte for
# byte each time and nbdkit's curl plugin serves the same.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/nginx.sh"

gen_ca ca "nbdforge curl test CA"
gen_cert web ca "$server_info"
random_file "$www/disk.img" 8M
nginx_start "
    ssl_certificate $tmp/web-cert.pem;
    ssl_certificate_key $tmp/web-key.pem;
" "ssl http2"
url="https://localhost:$http_port/disk.img"

same_served_as_nbdkit -r curl "$url" cainfo="$tmp/ca-cert.pem"
same_file "$tmp/ours.out" "$www/disk.img"

start_server -r curl "$url" sslverify=false
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "sslverify=false copy differs"

# Trusting another CA, the certificate is refused: the export does not open, the log says why.
gen_ca other "another CA"
start_server -r curl "$url" cainfo="$tmp/other-cert.pem" capath="$tmp/nginx"
expect_fail nbdinfo "$uri" 2>/dev/null
grep -F "curl: $url: getting the size:" "$server_log" | grep "SSL certificate problem" ||
    fail "no certificate error in the log"

# HTTP/2: libcurl's default over TLS, and asked for; HTTP/1.1 when asked.
: > "$tmp/nginx/access.log"
start_server -r curl "$url" cainfo="$tmp/ca-cert.pem" http-version=2TLS connections=4
nbdcopy --connections=2 "$uri" - | cmp - "$www/disk.img" || fail "HTTP/2 copy differs"
nginx_log | tail -3
nginx_log | grep ' 206 ' | grep -qv 'proto=HTTP/2.0' && fail "a ranged GET not over HTTP/2"
nginx_log | grep -q ' 206 .*proto=HTTP/2.0' || fail "no HTTP/2 request"
: > "$tmp/nginx/access.log"
start_server -r curl "$url" cainfo="$tmp/ca-cert.pem" http-version=1.1
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "HTTP/1.1 copy differs"
nginx_log | grep ' 206 ' | grep -qv 'proto=HTTP/1.1' && fail "a ranged GET not over HTTP/1.1"
bad_args -r curl "$url" http-version=4 -- "http-version=4"
echo "test-curl-https: ok"

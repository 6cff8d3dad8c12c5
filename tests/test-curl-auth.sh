#!/usr/bin/env bash
# curl plugin credentials against nginx: HTTP basic auth with user= and password=+FILE (and
# password=-FD), a 401 without it failing the export with the status; header= and cookie=
# reaching the server (nginx's access log records them); header-script= and cookie-script=
# renewed after *-script-renew= seconds ($iteration counts the runs); proxy= with proxy-user=
# and proxy-password=+FILE. None of the secrets
# appears in the server's log, even with -v -D curl.verbose=1 -D curl.scripts=1, nor in ps.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/nginx.sh"

password="pw-$RANDOM-s3cret"
proxy_password="proxy-$RANDOM-pw"
printf '%s\n' "$proxy_password" > "$tmp/proxy-password"
printf 'alice:%s\n' "$(openssl passwd -apr1 "$password")" > "$tmp/htpasswd"
printf '%s\n' "$password" > "$tmp/password"
chmod 600 "$tmp/password"
random_file "$www/disk.img" 4M
mkdir "$www/private" && cp "$www/disk.img" "$www/private/"
nginx_start "
    location /private/ { auth_basic test; auth_basic_user_file $tmp/htpasswd; }
"
debug=(-v -D curl.verbose=1 -D curl.scripts=1)
secrets=("$password" "$(printf 'alice:%s' "$password" | base64)" "$proxy_password"
    "$(printf 'bob:%s' "$proxy_password" | base64)" cookie-value-7f3 header-value-9c1 token-0 token-1 cook-0)
no_secrets_in() {
    local s
    for s in "${secrets[@]}"; do
        ! grep -qF -- "$s" "$@" || fail "secret '$s' found in $*"
    done
}

# Basic auth: the password from a file, then from a file descriptor.
start_server "${debug[@]}" -r curl "$http_url/private/disk.img" user=alice password=+"$tmp/password"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy with basic auth differs"
ps -ww -o args= -p "$server_pid" | tee "$tmp/ps"
no_secrets_in "$tmp/ps"
grep -q "curl: > Authorization: <hidden>" "$server_log" || fail "verbose log shows no hidden Authorization"
nginx_log | grep -q "GET /private/disk.img 206 .*user=alice" || fail "nginx saw no authenticated read"
exec 7<"$tmp/password"
start_server -r curl "$http_url/private/disk.img" user=alice password=-7
exec 7<&-
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy with password=-FD differs"

# Without the password (or with a wrong one): the export fails to open, naming the 401.
start_server -r curl "$http_url/private/disk.img"
expect_fail nbdinfo "$uri" 2>/dev/null
grep -F "curl: $http_url/private/disk.img: getting the size: HTTP/1.1 401" "$server_log" || fail "no 401 message"
start_server -r curl "$http_url/private/disk.img" user=alice password=wrong
expect_fail nbdinfo "$uri" 2>/dev/null
grep -F "HTTP/1.1 401" "$server_log" || fail "no 401 message for a wrong password"

# header= and cookie= (the cookie from a file) reach the server on every request.
printf 'session=cookie-value-7f3\n' > "$tmp/cookie"
: > "$tmp/nginx/access.log"
start_server "${debug[@]}" -r curl "$http_url/disk.img" header="X-Test: header-value-9c1" \
    header="User-Agent:" cookie=+"$tmp/cookie"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy with header and cookie differs"
nginx_log | grep -v "cookie=session=cookie-value-7f3 x=header-value-9c1" && fail "a request without the header or cookie"

# Scripts, renewed after a second: the second read after the pause carries token-1 and cook-1.
: > "$tmp/nginx/access.log"
start_server "${debug[@]}" -r curl "$http_url/disk.img" \
    header-script='echo "X-Test: token-$iteration"' header-script-renew=1 \
    cookie-script='echo "c=cook-$iteration"' cookie-script-renew=1
nbdsh -u "$uri" -c '
import time
a = h.pread(4096, 0)
time.sleep(1.5)
b = h.pread(4096, 4096)
'
nginx_log
nginx_log | grep -q "cookie=c=cook-0 x=token-0" || fail "first script outputs did not reach nginx"
nginx_log | tail -1 | grep -q "cookie=c=cook-1 x=token-1" || fail "renewed script outputs did not reach nginx"
grep -q "curl: header-script run 1: X-Test (values not shown)" "$server_log" ||
    fail "-D curl.scripts=1 did not log the renewal"
grep -q "curl: cookie-script run 1: c (values not shown)" "$server_log" || fail "no cookie-script run logged"
bad_args -r curl "$http_url/disk.img" header=A:b header-script=true -- "header= and header-script="

# Through a proxy (nginx itself) with credentials from a file: the host name exists only for the
# proxy, and nginx sees the Proxy-Authorization header.
: > "$tmp/nginx/access.log"
start_server "${debug[@]}" -r curl "http://images.invalid:$http_port/disk.img" proxy="$http_url" \
    proxy-user=bob proxy-password=+"$tmp/proxy-password"
nbdcopy "$uri" - | cmp - "$www/disk.img" || fail "copy through the proxy differs"
nginx_log | tail -1
nginx_log | grep -qF "pauth=Basic $(printf 'bob:%s' "$proxy_password" | base64)" ||
    fail "the proxy credentials did not reach nginx"

for log in "${server_logs[@]}"; do no_secrets_in "$log"; done
echo "test-curl-auth: ok"

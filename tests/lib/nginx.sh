# nginx for the curl plugin tests: a real HTTP server with byte ranges, TLS and HTTP/2, run by
# the test itself on a free loopback port, with its configuration, pid, logs and temporary files
# in $tmp/nginx. Source after functions.sh:
#
#   nginx_start 'location /r { return 302 /disk.img; }'   # extra lines for the server block
#   nbdinfo "..." ; curl "$http_url/disk.img"             # $www is the document root
#   nginx_log                                             # the access log so far
#
# The access log has one line per request in the format "t" below, which tests grep for what
# reached the server (method, status, range, cookie, X-Test header, protocol, user, and the
# Proxy-Authorization header: a request to another host through nginx as the proxy is served
# from $www too, since nginx's only server block takes every host name).

www="$tmp/www"
mkdir -p "$www" "$tmp/nginx"
http_port=$(free_tcp_port)
http_url="http://127.0.0.1:$http_port"
nginx_pid=

# nginx_start [SERVER-BLOCK-LINES] [LISTEN-OPTIONS]: (re)writes the configuration and starts
# nginx in the foreground of a background job on $http_port; waits until it accepts connections.
nginx_start() {
    local server_lines=${1:-} listen_options=${2:-} i
    # A single process: as root, nginx's workers would switch to "nobody", who cannot read $tmp.
    cat > "$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log info;
events { worker_connections 256; }
http {
    log_format t '\$request_method \$uri \$status range=\$http_range cookie=\$http_cookie x=\$http_x_test proto=\$server_protocol user=\$remote_user pauth=\$http_proxy_authorization';
    access_log $tmp/nginx/access.log t;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    default_type application/octet-stream;
    keepalive_timeout 60;
    server {
        listen 127.0.0.1:$http_port $listen_options;
        root $www;
        $server_lines
    }
}
EOF
    nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" </dev/null \
        >>"$tmp/nginx/stdout" 2>&1 &
    nginx_pid=$!
    server_pids+=("$nginx_pid")
    server_logs+=("$tmp/nginx/error.log")
    for ((i = 0; i < 100; i++)); do
        kill -0 "$nginx_pid" 2>/dev/null || { cat "$tmp/nginx/error.log" >&2; fail "nginx did not start"; }
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$http_port" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nginx did not listen on port $http_port"
}

# nginx_stop: stops nginx (TERM: it closes its connections at once) and waits for it.
nginx_stop() {
    kill -TERM "$nginx_pid"
    wait "$nginx_pid" 2>/dev/null || :
}

nginx_log() { cat "$tmp/nginx/access.log" 2>/dev/null || :; }

# read_fails_with_eio COUNT OFFSET: a read of $uri fails with EIO (the server logs why).
read_fails_with_eio() {
    nbdsh -u "$uri" -c "
try:
    h.pread($1, $2)
    raise SystemExit('the read of $1 bytes at $2 succeeded')
except nbd.Error as e:
    print('read refused:', e.string)
    assert e.errno == 'EIO', e.errno
"
}

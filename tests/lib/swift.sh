# A three-node OpenStack Swift cluster with the S3 API, on loopback, for the S3 plugin's tests.
# Source it after functions.sh:
#
#   source "$(dirname "$0")/lib/swift.sh"
#   start_swift                  # sets s3_endpoint, s3_access_key, s3_secret_key, swift_root
#   s3 mb disk                   # tests/lib/s3.py: make a bucket, list it, ...
#   stop_swift_node 2            # kill node 2's servers (the others go on)
#
# Swift (Debian's packages) rather than Garage: Garage is not packaged in Debian and a prebuilt
# binary cannot be fetched here, while Swift's s3api middleware is the S3 front end that
# OpenStack deployments run in production.  Each node is an account, a container and an object
# server on its own ports with its own device directory; the rings keep 3 replicas, one per node
# (one zone each), so any single node can die.  One proxy with s3api and tempauth (S3 access key
# "test:tester", secret "Zq9-s3cr3t"; tempauth needs a memcached, started here too) fronts
# them.  Every server runs as one process (workers = 0)
# to stay small; everything lives under $tmp/swift and is killed by functions.sh's cleanup (the
# pids are registered as servers).  Needs /usr/bin/python3 with the swift module (python3-swift).

swift_python=/usr/bin/python3

# start_swift: build the rings, start 3 nodes and the proxy, wait until the proxy answers S3.
start_swift() {
    swift_root="$tmp/swift"
    mkdir -p "$swift_root/etc" "$swift_root/log"
    local base i kind port
    # Ports: a free one for the proxy; the storage servers take nine of the twenty above a random
    # base. The bases stay below the kernel's ephemeral range (32768 and up): there any client's
    # connection may hold the port, and a storage server that cannot bind it dies (seen in a
    # fresh-clone run). Twenty apart, so clusters of tests running at once never share a port.
    base=$(( 20000 + (RANDOM % 600) * 20 ))
    swift_proxy_port=$(free_tcp_port)
    swift_memcache_port=$(free_tcp_port)
    cat > "$swift_root/etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = nbdforge-test
swift_hash_path_prefix = nbdforge-test
[storage-policy:0]
name = Policy-0
default = yes
EOF
    for i in 1 2 3; do
        mkdir -p "$swift_root/node$i/d$i"
        for kind in object container account; do
            case $kind in
                object) port=$((base + i * 3)) ;;
                container) port=$((base + i * 3 + 1)) ;;
                account) port=$((base + i * 3 + 2)) ;;
            esac
            cat > "$swift_root/etc/$kind-$i.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
devices = $swift_root/node$i
mount_check = false
workers = 0
swift_dir = $swift_root/etc
log_name = $kind-$i
log_level = WARNING
[pipeline:main]
pipeline = $kind-server
[app:$kind-server]
use = egg:swift#$kind
EOF
        done
    done
    cat > "$swift_root/etc/proxy.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $swift_proxy_port
workers = 0
swift_dir = $swift_root/etc
log_name = proxy
log_level = WARNING
[pipeline:main]
pipeline = catch_errors proxy-logging cache s3api tempauth proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
# A dead node is noticed at once on loopback; do not wait long for it.
conn_timeout = 0.5
node_timeout = 10
error_suppression_limit = 1
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = Zq9-s3cr3t .admin
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
# Multipart uploads would need the SLO middleware; the plugin never uses them.
allow_multipart_uploads = false
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$swift_memcache_port
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:proxy-logging]
use = egg:swift#proxy_logging
EOF
    # The rings, built in one Python process (swift-ring-builder would take a dozen).
    BASE=$base DIR="$swift_root/etc" "$swift_python" - <<'EOF'
import os
from swift.common.ring import RingBuilder
base, d = int(os.environ["BASE"]), os.environ["DIR"]
for n, (kind, off) in enumerate([("object", 0), ("container", 1), ("account", 2)]):
    b = RingBuilder(8, 3, 0)
    for i in (1, 2, 3):
        b.add_dev({"id": i - 1, "region": 1, "zone": i, "ip": "127.0.0.1",
                   "port": base + i * 3 + off, "device": "d%d" % i, "weight": 100})
    b.rebalance()
    b.get_ring().save(os.path.join(d, kind + ".ring.gz"))
EOF
    swift_node_pids=()
    for i in 1 2 3; do
        swift_node_pids[$i]=""
        for kind in object container account; do
            start_swift_server "$kind" "$kind-$i"
            swift_node_pids[$i]+=" $!"
        done
    done
    # tempauth keeps its tokens in memcached: a private one, 16 MiB, loopback only.
    memcached -l 127.0.0.1 -p "$swift_memcache_port" -U 0 -m 16 -u root \
        </dev/null >"$swift_root/log/memcached.log" 2>&1 &
    server_pids+=("$!")
    start_swift_server proxy proxy
    swift_proxy_pid=$!
    s3_endpoint="http://127.0.0.1:$swift_proxy_port"
    s3_access_key="test:tester"
    s3_secret_key="Zq9-s3cr3t"
    export s3_endpoint s3_access_key s3_secret_key
    # Up when every server listens (a bucket made while a container server is still starting
    # gets a 503) and an authenticated S3 call works.
    local t ports=("$swift_memcache_port" "$swift_proxy_port")
    for i in 1 2 3; do
        ports+=($((base + i * 3)) $((base + i * 3 + 1)) $((base + i * 3 + 2)))
    done
    for port in "${ports[@]}"; do
        wait_tcp_listening "$port"
    done
    for ((t = 0; t < 300; t++)); do
        s3 ls >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    cat "$swift_root"/log/*.log >&2
    fail "swift: the cluster did not come up in 60 s"
}

# wait_tcp_listening PORT: waits (30 s at most) for a listening socket on 127.0.0.1:PORT.
wait_tcp_listening() {
    local hex i
    hex=$(printf '0100007F:%04X' "$1")
    for ((i = 0; i < 300; i++)); do
        awk -v a="$hex" '$2 == a && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp && return 0
        sleep 0.1
    done
    cat "$swift_root"/log/*.log >&2
    fail "swift: nothing listens on port $1 after 30 s"
}

# start_swift_server KIND NAME: one server in the background, its log in $swift_root/log/NAME.log.
start_swift_server() {
    "$swift_python" "/usr/bin/swift-$1-server" "$swift_root/etc/$2.conf" --verbose \
        </dev/null >"$swift_root/log/$2.log" 2>&1 &
    server_pids+=("$!")
    server_logs+=("$swift_root/log/$2.log")
}

# stop_swift_node N: kill node N's three servers at once, as a crash would (SIGKILL).
stop_swift_node() {
    local pid
    for pid in ${swift_node_pids[$1]}; do
        kill -KILL "$pid" 2>/dev/null || :
    done
    for pid in ${swift_node_pids[$1]}; do
        wait "$pid" 2>/dev/null || :
    done
}

# s3 COMMAND ARGS...: tests/lib/s3.py against the cluster (boto3, a real S3 client).
s3() {
    "$swift_python" "$repo/tests/lib/s3.py" "$@"
}

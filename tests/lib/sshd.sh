# An OpenSSH server for the ssh plugin's tests, on a free loopback port, run by the test itself
# as the current user with throwaway keys in $tmp/ssh.  Source after functions.sh:
#
#   source "$(dirname "$0")/lib/sshd.sh"
#   start_sshd                  # sets ssh_port, ssh_dir, ssh_args (host, port, user, identity,
#                               # known-hosts: what both nbdforge and nbdkit need), sshd_pid
#   start_server ssh "${ssh_args[@]}" "$tmp/disk.img"
#   kill_sshd                   # sshd and its per-connection children, as if the machine went away
#
# The server's private configuration allows root (tests run as root in CI), reads the user key
# from $ssh_dir/authorized_keys and offers SFTP with sshd's built-in server, whose relative paths
# start in $tmp (as they would in the remote user's home directory).

ssh_dir="$tmp/ssh"
mkdir -p "$ssh_dir"
# sshd refuses to start without its privilege separation directory.
mkdir -p /run/sshd 2>/dev/null || :
# Three host keys, and only the ECDSA one recorded: the client must ask for the type it knows.
ssh-keygen -q -t ed25519 -N '' -C host -f "$ssh_dir/host_ed25519"
ssh-keygen -q -t ecdsa -N '' -C host -f "$ssh_dir/host_key"
ssh-keygen -q -t rsa -b 2048 -N '' -C host -f "$ssh_dir/host_rsa"
ssh-keygen -q -t ed25519 -N '' -C user -f "$ssh_dir/user_key"
cp "$ssh_dir/user_key.pub" "$ssh_dir/authorized_keys"
ssh_port=$(free_tcp_port)
cat > "$ssh_dir/sshd_config" <<CONF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $ssh_dir/host_ed25519
HostKey $ssh_dir/host_key
HostKey $ssh_dir/host_rsa
PidFile $ssh_dir/sshd.pid
AuthorizedKeysFile $ssh_dir/authorized_keys
PermitRootLogin yes
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp -d $tmp
CONF
# The ECDSA host key as a client records it for a non-default port.
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$ssh_dir/host_key.pub")" > "$ssh_dir/known_hosts"
ssh_user=$(id -un)
ssh_args=(host=127.0.0.1 port="$ssh_port" user="$ssh_user"
          identity="$ssh_dir/user_key" known-hosts="$ssh_dir/known_hosts")
# Keep the client side away from the real ~/.ssh: nbdforge reads $HOME.
export HOME="$tmp/home"
mkdir -p "$HOME"

sshd_pid=
start_sshd() {
    /usr/sbin/sshd -D -e -f "$ssh_dir/sshd_config" 2>>"$ssh_dir/sshd.log" &
    sshd_pid=$!
    server_pids+=("$sshd_pid")
    server_logs+=("$ssh_dir/sshd.log")
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null && return 0
        kill -0 "$sshd_pid" 2>/dev/null || fail "sshd exited: $(cat "$ssh_dir/sshd.log")"
        sleep 0.1
    done
    fail "sshd did not listen on port $ssh_port"
}

# descendants PID: the processes below PID, deepest first.
descendants() {
    local child
    for child in $(pgrep -P "$1" || :); do
        descendants "$child"
        echo "$child"
    done
}

# kill_sshd: sshd and every session it serves are killed at once (SIGKILL): connections drop.
kill_sshd() {
    local pids
    pids="$(descendants "$sshd_pid") $sshd_pid"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || :
    wait "$sshd_pid" 2>/dev/null || :
}

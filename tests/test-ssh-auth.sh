#!/usr/bin/env bash
# Host verification and authentication of the ssh plugin against a real OpenSSH server: the right
# host key in known-hosts= (given once or among several, of any of the server's key types, hashed
# or not) is accepted, a wrong one or none is refused with a message naming the remote and no
# data served, verify-remote-host=false skips the check; identity= logs in with a key the server
# knows and not with one it does not, the default key files and ssh-agent are tried; config= reads an
# ssh_config file (Host alias, HostName, Port, User, IdentityFile, UserKnownHostsFile);
# a password given as password=+FILE is never logged. Password logins are not tested: sshd would
# need a password for root. Bad parameters fail before the server listens.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/sshd.sh"
start_sshd
random_file "$tmp/disk.img" 1M
host=(host=127.0.0.1 port="$ssh_port" user="$ssh_user")

# reads_ok ARGS...: a server with ARGS serves the file.
reads_ok() {
    start_server ssh "$@" "$tmp/disk.img"
    nbdcopy "$uri" "$tmp/out.img"
    same_file "$tmp/disk.img" "$tmp/out.img"
    stop_server "$server_pid"
    echo "served: $*"
}
# refused ARGS... -- WORDS...: the client's open fails; the log names the remote and WORDS.
refused() {
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    start_server ssh "${args[@]}" "$tmp/disk.img"
    expect_fail nbdinfo "$uri" 2>"$tmp/client.err"
    stop_server "$server_pid"
    grep -qF "@127.0.0.1:$ssh_port$tmp/disk.img" "$server_log" ||
        fail "${args[*]}: the message does not name the remote: $(cat "$server_log")"
    local w
    for w in "$@"; do
        grep -qF -- "$w" "$server_log" || fail "${args[*]}: no '$w' in: $(cat "$server_log")"
    done
    echo "refused: ${args[*]}: $(grep -F sftp:// "$server_log" | head -1)"
}

# Known hosts.
reads_ok "${ssh_args[@]}"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/other_key"
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$tmp/other_key.pub")" > "$tmp/wrong_hosts"
echo "[127.0.0.1]:1 $(cut -d' ' -f1,2 "$tmp/other_key.pub")" > "$tmp/unrelated_hosts"
refused "${host[@]}" identity="$ssh_dir/user_key" known-hosts="$tmp/wrong_hosts" -- "does not match"
refused "${host[@]}" identity="$ssh_dir/user_key" known-hosts="$tmp/unrelated_hosts" -- "not in the known hosts"
refused "${host[@]}" identity="$ssh_dir/user_key" -- "not in the known hosts" "$HOME/.ssh/known_hosts"
reads_ok "${host[@]}" identity="$ssh_dir/user_key" known-hosts="$tmp/unrelated_hosts" known-hosts="$ssh_dir/known_hosts"
reads_ok "${host[@]}" identity="$ssh_dir/user_key" verify-remote-host=false
# Only the RSA key, hashed as ssh-keygen -H hashes it: the client asks for that type.
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$ssh_dir/host_rsa.pub")" > "$tmp/rsa_hosts"
ssh-keygen -q -H -f "$tmp/rsa_hosts" 2>/dev/null
grep -q '^|1|' "$tmp/rsa_hosts" || fail "ssh-keygen -H did not hash $tmp/rsa_hosts"
reads_ok "${host[@]}" identity="$ssh_dir/user_key" known-hosts="$tmp/rsa_hosts"
# nbdkit refuses the wrong key too.
start_reference ssh "${host[@]}" identity="$ssh_dir/user_key" known-hosts="$tmp/wrong_hosts" "$tmp/disk.img"
expect_fail nbdinfo "$uri" 2>/dev/null
stop_server "$server_pid"

# Identities: a key the server does not know is refused; the default key files are tried.
refused "${host[@]}" identity="$tmp/other_key" known-hosts="$ssh_dir/known_hosts" -- "authentication failed" publickey
mkdir -p "$HOME/.ssh"
cp "$ssh_dir/user_key" "$HOME/.ssh/id_ed25519"
cp "$ssh_dir/known_hosts" "$HOME/.ssh/known_hosts"
reads_ok "${host[@]}"
reads_ok "${host[@]}" identity="%d/id_ed25519" known-hosts="%d/known_hosts"
rm -r "$HOME/.ssh"

# ssh-agent: a key held by the agent, with no key file to read.
eval "$(ssh-agent -s -a "$tmp/agent.sock")" > /dev/null
server_pids+=("$SSH_AGENT_PID")
ssh-add -q "$ssh_dir/user_key" 2>/dev/null
reads_ok "${host[@]}" known-hosts="$ssh_dir/known_hosts"
kill "$SSH_AGENT_PID"
unset SSH_AUTH_SOCK SSH_AGENT_PID
refused "${host[@]}" known-hosts="$ssh_dir/known_hosts" -- "authentication failed"

# config=: an alias resolved by an ssh_config file; the command line wins over it.
cat > "$tmp/ssh_config" <<CONF
Host other
    User nobody-at-all
Host disk-server
    HostName 127.0.0.1
    Port $ssh_port
    User $ssh_user
    IdentityFile $ssh_dir/user_key
    UserKnownHostsFile /nonexistent $ssh_dir/known_hosts
CONF
reads_ok host=disk-server config="$tmp/ssh_config"
refused host=disk-server config="$tmp/ssh_config" user=nobody-at-all -- "authentication failed"

# A password read from a file never reaches the log, even with -v.
echo "pw-$RANDOM-secret" > "$tmp/password"
reads_ok -v "${ssh_args[@]}" password=+"$tmp/password"
! grep -qF "$(cat "$tmp/password")" "$server_log" || fail "the password is in the log"
! grep -qF "$(cat "$tmp/password")" "$ssh_dir/sshd.log" || fail "the password is in sshd's log"

# Bad parameters.
bad_args ssh path=/x -- "host=" "path="
bad_args ssh host=h -- "path="
bad_args ssh host=h /x create=true -- "create-size"
bad_args ssh host=h /x port=nope -- "port=nope"
bad_args ssh host=h /x create-mode=077777 create=true create-size=1M -- "create-mode=077777"
bad_args ssh host=h /x timeout=soon -- "timeout=soon"
bad_args ssh host=h /x identity=relative/key -- "identity=relative/key" "absolute"
bad_args ssh host=h /x config=/nonexistent/config -- "config=/nonexistent/config"
bad_args ssh host=h /x password=+/nonexistent/pw -- "/nonexistent/pw"

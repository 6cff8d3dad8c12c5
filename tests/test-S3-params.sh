#!/usr/bin/env bash
# timeout: 240
# The S3 plugin's parameters: --help and --dump-plugin, bad values refused before listening with
# the parameter and value named, and credentials from each place boto3 looks (parameters, a
# file given as +FILE, the environment, a credentials file with profile=) against a Swift
# cluster; the secret never shows in the -v log or the process listing.
source "$(dirname "$0")/lib/functions.sh"
source "$(dirname "$0")/lib/swift.sh"

plugin_describes_itself S3 key "object-size="
b=(bucket=b key=k)
bad_args S3 key=k -- "bucket=" "required"
bad_args S3 bucket=b -- "key=" "required"
bad_args S3 "${b[@]}" size=1M -- "size=" "object-size=" "together"
bad_args S3 "${b[@]}" size=1M object-size=3000 -- "size=1048576" "multiple of object-size=3000"
bad_args S3 "${b[@]}" size=1Q object-size=1M -- "size=1Q"
bad_args S3 "${b[@]}" connections=0 -- "connections=0"
bad_args S3 "${b[@]}" timeout=soon -- "timeout=soon"
bad_args S3 "${b[@]}" endpoint-url=ftp://x access-key=a secret-key=s -- "endpoint-url=ftp://x" "scheme"
bad_args S3 "${b[@]}" access-key=a -- "access-key=" "secret-key=" "together"
bad_args S3 "${b[@]}" colour=red -- "colour"
HOME="$tmp/nohome" AWS_ACCESS_KEY_ID='' bad_args S3 "${b[@]}" -- "no credentials"
bad_args S3 "${b[@]}" access-key=a secret-key=+"$tmp/missing" -- "secret-key=+$tmp/missing"

start_swift
s3 mb creds
printf '%s\n' "$s3_secret_key" > "$tmp/secret"
disk=(endpoint-url="$s3_endpoint" bucket=creds key=d size=4M object-size=1M)
check() {
    nbdsh -u "$uri" -c 'h.pwrite(b"\x42" * 512, 1 << 20); assert h.pread(512, 1 << 20) == b"\x42" * 512' ||
        fail "$1: read and write failed"
    grep -qF "$s3_secret_key" "$server_log" && fail "$1: the secret is in the log"
    ps -ww -o args= -p "$server_pid" | grep -qF "$s3_secret_key" && fail "$1: the secret is in ps"
    echo "$1: ok"
}
start_server -v S3 "${disk[@]}" access-key="$s3_access_key" secret-key=+"$tmp/secret"
check "secret-key=+FILE"
grep -q "secret-key=<hidden>" "$server_log" || fail "-v does not show the secret as hidden"
AWS_ACCESS_KEY_ID="$s3_access_key" AWS_SECRET_ACCESS_KEY="$s3_secret_key" start_server -v S3 "${disk[@]}"
check "environment"
mkdir -p "$tmp/home/.aws"
printf '[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[swift]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
    "$s3_access_key" "$s3_secret_key" > "$tmp/home/.aws/credentials"
HOME="$tmp/home" start_server -v S3 "${disk[@]}" profile=swift
check "~/.aws/credentials profile=swift"
HOME="$tmp/home" AWS_PROFILE=swift start_server -v S3 "${disk[@]}"
check "~/.aws/credentials AWS_PROFILE=swift"
echo OK

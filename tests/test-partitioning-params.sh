#!/usr/bin/env bash
# The partitioning plugin's parameters: each bad value exits 1 before listening with a message
# naming the parameter and the value (nbdkit refuses the same ones; a non-power-of-two alignment
# trips an assertion in nbdkit 1.32 rather than a message); --help and --dump-plugin describe it.
source "$(dirname "$0")/lib/functions.sh"

printf 'some data' > "$tmp/p"
: > "$tmp/empty"

bad_args partitioning -- "file="
bad_args partitioning "$tmp/nonexistent" -- "file=$tmp/nonexistent"
bad_args partitioning "$tmp/empty" -- "file=$tmp/empty" "zero length"
bad_args partitioning "$tmp/p" partition-type=apm -- "partition-type=apm"
bad_args partitioning alignment=256 "$tmp/p" -- "alignment=256"
bad_args partitioning alignment=2M "$tmp/p" -- "alignment=2M"
bad_args partitioning alignment=1536 "$tmp/p" -- "alignment=1536" "power of two"
bad_args partitioning alignment=4X "$tmp/p" -- "alignment=4X"
bad_args partitioning mbr-id=0x100 "$tmp/p" -- "mbr-id=0x100"
bad_args partitioning mbr-id=linux "$tmp/p" -- "mbr-id=linux"
bad_args partitioning type-guid=0FC63DAF-8483-4772-8E79 "$tmp/p" -- "type-guid=0FC63DAF-8483-4772-8E79"
bad_args partitioning type-guid=0FC63DAF-8483-4772-8E79-3D69D8477DEX "$tmp/p" -- "type-guid=0FC63DAF-8483-4772-8E79-3D69D8477DEX"
bad_args partitioning "$tmp/p" colour=red -- "colour"

# A sparse file too large for an MBR disk.
truncate -s 3T "$tmp/huge"
bad_args partitioning partition-type=mbr "$tmp/huge" -- "partition-type=mbr" "partition-type=gpt"
# ... which GPT takes, and is the default for it.
start_server -r partitioning "$tmp/huge"
nbdsh -u "$uri" -c 'assert h.pread(8, 512) == b"EFI PART"' || fail "a 3T disk is not GPT"
stop_server "$server_pid"

# Parameters are case-blind where nbdkit's are.
start_server -r partitioning partition-type=GPT mbr-id=DEFAULT type-guid=Default "$tmp/p"
nbdsh -u "$uri" -c 'assert h.pread(8, 512) == b"EFI PART"' || fail "partition-type=GPT"
stop_server "$server_pid"

plugin_describes_itself partitioning file "partition-type=mbr|gpt"
echo OK

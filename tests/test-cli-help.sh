#!/usr/bin/env bash
# The informational command-line modes: --help, --version, PLUGIN --help, --dump-plugin,
# --dump-config.  Each exits 0, prints to stdout, and starts no server.
source "$(dirname "$0")/lib/functions.sh"

"${server_cmd[@]}" --help > "$tmp/help"
for opt in --filter --foreground --unix --port --readonly --single --exportname --oldstyle; do
    grep -q -- "$opt" "$tmp/help" || fail "--help does not mention $opt"
done
grep -q PLUGIN "$tmp/help" || fail "--help does not show the PLUGIN argument"

"${server_cmd[@]}" --version > "$tmp/version"
cat "$tmp/version"
head -n1 "$tmp/version" | grep -Eq '^[a-z-]+ [0-9]+\.[0-9]+\.[0-9]+' || fail "--version: bad first line"
"${server_cmd[@]}" -V | cmp - "$tmp/version" || fail "-V differs from --version"

"${server_cmd[@]}" memory --help > "$tmp/memory-help"
grep -q 'size=' "$tmp/memory-help" || fail "memory --help does not describe size="
"${server_cmd[@]}" file --help > "$tmp/file-help"
grep -q 'file=' "$tmp/file-help" || fail "file --help does not describe file="
grep -q 'dir=' "$tmp/file-help" || fail "file --help does not describe dir="

"${server_cmd[@]}" memory --dump-plugin > "$tmp/dump-plugin"
cat "$tmp/dump-plugin"
grep -qx 'name=memory' "$tmp/dump-plugin" || fail "--dump-plugin: no name=memory"
grep -qx 'thread_model=parallel' "$tmp/dump-plugin" || fail "--dump-plugin: no thread_model=parallel"
grep -Eqx 'version=[0-9.]+.*' "$tmp/dump-plugin" || fail "--dump-plugin: no version="
grep -qx 'magic_config_key=size' "$tmp/dump-plugin" || fail "--dump-plugin: no magic_config_key=size"
"${server_cmd[@]}" --dump-plugin file > "$tmp/dump-file"
grep -qx 'name=file' "$tmp/dump-file" || fail "--dump-plugin before PLUGIN"
"${server_cmd[@]}" null --dump-plugin > "$tmp/dump-null"
grep -qx 'name=null' "$tmp/dump-null" || fail "null --dump-plugin"

"${server_cmd[@]}" --dump-config > "$tmp/dump-config"
cat "$tmp/dump-config"
for key in binary host_os host_cpu version version_major version_minor plugindir filterdir; do
    grep -Eq "^$key=.+" "$tmp/dump-config" || fail "--dump-config lacks $key="
done
grep -Eqx 'version_major=[0-9]+' "$tmp/dump-config" || fail "version_major not a number"
grep -Eqx 'version_minor=[0-9]+' "$tmp/dump-config" || fail "version_minor not a number"
echo OK

# --help alone lists every plugin and filter; each plugin listed answers --help and
# --dump-plugin, and has its manual page and a README status row.
plugins=$(sed -n '/^Plugins:/,/^$/p' "$tmp/help" | tail -n +2)
filters=$(sed -n '/^Filters:/,/^$/p' "$tmp/help" | tail -n +2)
for p in memory file sh eval data partitioning floppy iso linuxdisk tmpdisk ondemand; do
    grep -qw -- "$p" <<< "$plugins" || fail "--help does not list the $p plugin"
done
for f in cow cache log stats blocksize-policy; do
    grep -qw -- "$f" <<< "$filters" || fail "--help does not list the $f filter"
done
for p in $plugins; do
    "${server_cmd[@]}" "$p" --help > "$tmp/p-help" || fail "$p --help failed"
    grep -q "^plugin: $p" "$tmp/p-help" || fail "$p --help does not describe the plugin"
    "${server_cmd[@]}" "$p" --dump-plugin > "$tmp/p-dump" || fail "$p --dump-plugin failed"
    grep -qx "name=$p" "$tmp/p-dump" || fail "$p --dump-plugin does not say name=$p"
    [ -f "$repo/docs/nbdforge-$p.md" ] || fail "no manual page docs/nbdforge-$p.md"
    grep -q "\`$p\`" "$repo/README.md" || fail "the README does not mention the $p plugin"
done
for f in $filters; do
    [ -f "$repo/docs/nbdforge-$f.md" ] || fail "no manual page docs/nbdforge-$f.md"
done

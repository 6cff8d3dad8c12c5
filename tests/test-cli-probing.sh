#!/usr/bin/env bash
# Probing, as nbdkit-probing(1) describes it: --dump-config keys, --version (also under the name
# "nbdkit", where it reports the nbdkit release it stands in for), PLUGIN --version,
# --filter=F null --version (fails for a missing filter), --dump-plugin, PLUGIN --help with its
# filters, --long-options/--short-options (every option listed is accepted), and the bash
# completion script built on them.
source "$(dirname "$0")/lib/functions.sh"

n=("${server_cmd[@]}")

# --- --dump-config --------------------------------------------------------------------------
"${n[@]}" --dump-config > "$tmp/config"
cat "$tmp/config"
key() { sed -n "s/^$1=//p" "$tmp/config"; }
for k in binary bindir exit_with_parent filterdir host_cpu host_os libdir mandir name plugindir \
         root_tls_certificates_dir run_default_socket sbindir selinux sysconfdir tls version \
         version_major version_minor; do
    grep -q "^$k=" "$tmp/config" || fail "--dump-config lacks $k="
done
grep -q "^version_extra=" "$tmp/config" || fail "--dump-config lacks version_extra="
[ "$(key exit_with_parent)" = yes ] || fail "exit_with_parent=$(key exit_with_parent)"
[ "$(key tls)" = yes ] || fail "tls=$(key tls)"
[ -x "$(key binary)" ] || fail "binary=$(key binary) is not executable"
version=$(key version)
[ "$(key version_major).$(key version_minor)" = "$(echo "$version" | cut -d. -f1-2)" ] ||
    fail "version_major/minor do not match version=$version"
# Lines are key=value, sorted by key, as nbdkit prints them.
grep -vq '^[a-z_]*=' "$tmp/config" && fail "a --dump-config line is not key=value"
sort -c "$tmp/config" || fail "--dump-config is not sorted"
# The plugins and filters it lists exist.
for p in $(key plugins); do "${n[@]}" "$p" --version >/dev/null || fail "plugins= lists $p"; done
for f in $(key filters); do
    "${n[@]}" --filter="$f" null --version >/dev/null || fail "filters= lists $f"
done
# --dump-config wins over anything else on the line, as in nbdkit.
"${n[@]}" --version --dump-config memory | cmp - "$tmp/config" || fail "--dump-config not first"

# --- --version ------------------------------------------------------------------------------
name=$(key name)
[ "$("${n[@]}" --version)" = "$name $version" ] || fail "--version: $("${n[@]}" --version)"
"${n[@]}" memory --version > "$tmp/v"
[ "$(sed -n 1p "$tmp/v")" = "$name $version" ] || fail "memory --version line 1: $(cat "$tmp/v")"
grep -Eqx 'memory [0-9]+\.[0-9]+\.[0-9]+.*' "$tmp/v" || fail "memory --version: $(cat "$tmp/v")"
"${n[@]}" --filter=nofilter null --version > "$tmp/v"
[ "$(wc -l < "$tmp/v")" -eq 3 ] || fail "--filter=nofilter null --version: $(cat "$tmp/v")"
grep -q '^nofilter ' "$tmp/v" && grep -q '^null ' "$tmp/v" || fail "filter probe: $(cat "$tmp/v")"
expect_fail "${n[@]}" --filter=no-such-filter null --version 2>"$tmp/err"
grep -q 'no-such-filter' "$tmp/err" || fail "missing filter probe: $(cat "$tmp/err")"
expect_fail "${n[@]}" no-such-plugin --version 2>"$tmp/err"
grep -q 'no-such-plugin' "$tmp/err" || fail "missing plugin probe: $(cat "$tmp/err")"
# nbdkit's way of naming a plugin by its shared object maps to the built-in one.
"${n[@]}" /usr/lib/nbdkit/plugins/nbdkit-memory-plugin.so --version | grep -q '^memory ' ||
    fail "a plugin path does not map to the built-in plugin"

# Under the name nbdkit it reports the nbdkit release it implements; its own version is extra.
bin=$(key binary)
ln -s "$bin" "$tmp/nbdkit"
"$tmp/nbdkit" --version > "$tmp/v"
grep -Eqx 'nbdkit 1\.[0-9]+\.[0-9]+' "$tmp/v" || fail "as nbdkit, --version: $(cat "$tmp/v")"
"$tmp/nbdkit" --dump-config > "$tmp/kconfig"
grep -qx 'name=nbdkit' "$tmp/kconfig" || fail "as nbdkit, name= is not nbdkit"
grep -qx 'version_major=1' "$tmp/kconfig" || fail "as nbdkit, version_major is not 1"
minor=$(sed -n 's/^version_minor=//p' "$tmp/kconfig")
[ "$minor" -ge 36 ] || fail "as nbdkit, version_minor=$minor (want a modern nbdkit)"
[ "$(sed -n 's/^version=//p' "$tmp/kconfig")" = "$(cut -d' ' -f2 "$tmp/v")" ] ||
    fail "as nbdkit, --version and version= disagree"
grep -q "^version_extra=.*$version" "$tmp/kconfig" || fail "as nbdkit, version_extra lacks $version"
# Messages carry the name it was called by.
expect_fail "$tmp/nbdkit" --bogus 2>"$tmp/err"
grep -q '^nbdkit: ' "$tmp/err" || fail "as nbdkit, messages start: $(cat "$tmp/err")"

# --- --dump-plugin, PLUGIN --help -------------------------------------------------------------
"${n[@]}" memory --dump-plugin > "$tmp/dp"
for k in path name version api_version thread_model max_thread_model magic_config_key; do
    grep -q "^$k=" "$tmp/dp" || fail "--dump-plugin lacks $k="
done
grep -vq '^[a-z_]*=' "$tmp/dp" && fail "a --dump-plugin line is not key=value"
"${n[@]}" --filter=nofilter memory --help > "$tmp/help"
grep -q '^filter: nofilter' "$tmp/help" || fail "PLUGIN --help lacks the filter section"
grep -q '^plugin: memory' "$tmp/help" || fail "PLUGIN --help lacks the plugin section"
grep -q 'size=' "$tmp/help" || fail "memory --help lacks size="
[ "$(grep -n '^filter: ' "$tmp/help" | cut -d: -f1)" -lt "$(grep -n '^plugin: ' "$tmp/help" | cut -d: -f1)" ] ||
    fail "filters must come before the plugin in --help"

# --- --long-options, --short-options ----------------------------------------------------------
"${n[@]}" --long-options > "$tmp/long"
"${n[@]}" --short-options > "$tmp/short"
for o in --foreground --unix --port --run --exit-with-parent --print-uri --timeout --vsock \
         --tls --tls-certificates --tls-psk --tls-verify-peer --filter --pidfile --user --group \
         --log --selinux-label --swap --mask-handshake --no-sr --no-meta-contexts --dump-plugin \
         --dump-config --single --stdin --readonly --exportname --threads --verbose --version; do
    grep -qx -- "$o" "$tmp/long" || fail "--long-options lacks $o"
done
for o in -4 -6 -D -e -f -g -i -n -o -p -P -r -s -t -u -U -v -V; do
    grep -qx -- "$o" "$tmp/short" || fail "--short-options lacks $o"
    grep -qx -- "$o" "$tmp/long" || fail "--long-options does not end with the short ones ($o)"
done
# Every listed option is recognised by the parser ("--opt=x" is either taken or refused for
# its argument, never "unrecognized").
while read -r o; do
    [[ $o == --* ]] || continue
    "${n[@]}" "$o=x" --dump-config >/dev/null 2>"$tmp/err" || :
    grep -q unrecognized "$tmp/err" && fail "$o is listed but not accepted: $(cat "$tmp/err")"
done < "$tmp/long"

# --- bash completion -------------------------------------------------------------------------
completion="$repo/contrib/bash-completion/nbdforge"
bash -n "$completion" || fail "completion script has a syntax error"
complete_words() {
    PATH="$(dirname "$bin"):$PATH" bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _nbdforge; echo "${COMPREPLY[*]}"' \
        _ "$completion" "$(basename "$bin")" "$@"
}
[ "$(complete_words --fore)" = --foreground ] || fail "completion of --fore: $(complete_words --fore)"
[ "$(complete_words --log=sy)" = --log=syslog ] || fail "completion of --log=sy"
complete_words mem | grep -qw memory || fail "plugin name completion: $(complete_words mem)"
complete_words --filter nof | grep -qw nofilter || fail "filter completion"
complete_words -f memory al | grep -qw 'allocator=' || fail "plugin key completion"
echo OK

#!/usr/bin/env bash
# The exportname filter over the file plugin's dir= mode: the listing, the default export, strict
# names and descriptions are what nbdkit gives for the same command line.
source "$(dirname "$0")/lib/functions.sh"

mkdir "$tmp/dir"
for f in file1 file2 file3; do
    echo "$f" > "$tmp/dir/$f"
    truncate -s 4096 "$tmp/dir/$f"
done

# describe URI: the export list (name and description), the default export's first bytes and the
# outcome of opening file2.
describe() {
    URI=$1 nbdsh -n -c '
import nbd, os
uri = os.environ["URI"]
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
names = []
try:
    h.opt_list(lambda name, desc: names.append("%s[%s]" % (name, desc)))
    print("list:", " ".join(sorted(names)))
except nbd.Error as e:
    print("list: error")
h.opt_abort()
for export in ("", "file2"):
    g = nbd.NBD()
    g.set_full_info(True)
    try:
        g.connect_uri(uri.replace("nbd+unix:///", "nbd+unix:///" + export))
    except nbd.Error:
        print(repr(export), "refused")
        continue
    try:
        desc = g.get_export_description()
    except nbd.Error:
        desc = None
    print(repr(export), g.pread(5, 0), desc)
'
}

compare() {
    start_nbdkit --filter=exportname file dir="$tmp/dir" "$@"
    start_server --filter=exportname file dir="$tmp/dir" "$@"
    local theirs ours
    theirs=$(describe "$peer_uri" 2>&1)
    ours=$(describe "$uri" 2>&1)
    printf '%s:\n%s\n' "$*" "$ours"
    [ "$theirs" = "$ours" ] || fail "$*: nbdkit says: $theirs"
}

compare default-export=file2
compare exportname-list=empty default-export=file1
compare exportname-list=defaultonly default-export=file3
compare exportname-list=explicit exportname=file1 exportname=file3 exportdesc=fixed:disk
compare exportname-list=explicit exportname-strict=true exportname=file1 exportname=file3
compare exportname-list=error default-export=file1 'exportdesc=script:echo "about $name"'
bad_args --filter=exportname memory 1M exportname-list=all -- exportname-list=all
echo OK

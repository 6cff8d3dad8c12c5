#!/usr/bin/env bash
# nbdkit's language plugins, as Debian packages them (nbdkit-plugin-python, -perl, -lua, -tcl),
# are C plugins that embed an interpreter: loaded by path through nbdforge, each runs a small
# script serving the same disk as under nbdkit (nbdcopy, cmp) and as the script means it.
# (nbdkit-plugin-ruby is left out: with Debian's Ruby 3.1 it crashes under nbdkit 1.32 itself.)
# timeout: 180
source "$(dirname "$0")/lib/functions.sh"
cd "$tmp"

D=/usr/lib/x86_64-linux-gnu/nbdkit/plugins
python3 -c "open('want', 'wb').write(bytes(i % 253 for i in range(65536)))"

cat > disk.py <<'S'
API_VERSION = 2
def open(readonly): return 1
def get_size(h): return 65536
def pread(h, buf, offset, flags):
    for i in range(len(buf)): buf[i] = (offset + i) % 253
S
cat > disk.pl <<'S'
sub open { return 1; }
sub get_size { return 65536; }
sub pread { my ($h, $count, $offset, $flags) = @_; return join("", map { chr(($offset + $_) % 253) } 0 .. $count - 1); }
S
cat > disk.lua <<'S'
function open (readonly) return 1 end
function get_size (h) return 65536 end
function pread (h, count, offset)
  local t = {}
  for i = 0, count - 1 do t[#t + 1] = string.char((offset + i) % 253) end
  return table.concat(t)
end
S
cat > disk.tcl <<'S'
proc plugin_open {readonly} { return 1 }
proc get_size {h} { return 65536 }
proc pread {h count offset} {
    set buf ""
    for {set i 0} {$i < $count} {incr i} { append buf [binary format c [expr {($offset + $i) % 253}]] }
    return $buf
}
S

for lang in python:py perl:pl lua:lua tcl:tcl; do
    plugin="$D/nbdkit-${lang%:*}-plugin.so"
    [ -e "$plugin" ] || fail "$plugin is not installed"
    same_as_nbdkit "$plugin" "$tmp/disk.${lang#*:}"
    cmp ours.img want || fail "${lang%:*}: not the script's disk"
done

# A Python plugin that writes: the interpreter runs on the server's threads.
cat > rw.py <<'S'
API_VERSION = 2
disk = bytearray(1 << 20)
def open(readonly): return 1
def get_size(h): return len(disk)
def can_write(h): return True
def pread(h, buf, offset, flags): buf[:] = disk[offset:offset + len(buf)]
def pwrite(h, buf, offset, flags): disk[offset:offset + len(buf)] = buf
S
random_file data 1M
start_server "$D/nbdkit-python-plugin.so" "$tmp/rw.py"
qemu-img convert -n -f raw -O raw data "$uri"
qemu-img compare -f raw -F raw data "$uri" || fail "python: qemu-img compare"
stop_server "$server_pid"

echo "PASS: $(basename "$0")"

#!/usr/bin/env bash
# The luks filter beside qemu-img, cryptsetup and nbdkit's luks filter: LUKSv1 disks made by
# qemu-img (xts-plain64, cbc-essiv, cbc-plain64, ctr, ecb; sha1 to sha512 and ripemd160 key
# derivation) and by cryptsetup luksFormat (the passphrase in the second key slot only, given as
# +FILE and -FD) read through nbdforge as the plaintext qemu-img wrote into them, whole and at
# random offsets, and as nbdkit --filter=luks serves them (for the ciphers nbdkit has); writes
# through nbdforge (nbdcopy, unaligned qemu-io writes, fio with verify) read back by qemu-img
# convert and by nbdkit; a wrong passphrase, a corrupt header, a LUKSv2 disk and a plain disk are
# refused as nbdkit refuses them, with a message naming the filter; bad parameters stop the
# server.
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"
export PATH="$PATH:/usr/sbin:/sbin"

# The filter's block sizes are nbdkit's: 512 bytes minimum and preferred.
check_block_sizes() {
    [ "$(nbdinfo --json "$uri" | python3 -c 'import json, sys; j = json.load(sys.stdin)["exports"][0]; print(j["block_size_minimum"], j["block_size_preferred"])')" = "512 512" ] ||
        fail "block sizes are not 512 and 512"
}

printf 's3cret' > "$tmp/pw"
printf 'second-key' > "$tmp/pw2"
SECRET=(--object "secret,id=sec0,file=$tmp/pw")

# qemu_luks NAME OPTIONS: a 4 MiB LUKS disk $tmp/NAME.img made by qemu-img with OPTIONS, holding
# the plaintext $tmp/NAME.plain written by qemu-img.
qemu_luks() {
    qemu-img create -f luks "${SECRET[@]}" -o "key-secret=sec0,iter-time=10,$2" "$tmp/$1.img" 4M >/dev/null
    random_file "$tmp/$1.plain" 4M
    qemu-img convert -n "${SECRET[@]}" -f raw "$tmp/$1.plain" \
        --target-image-opts "driver=luks,key-secret=sec0,file.filename=$tmp/$1.img"
}

# plaintext_of IMG OUT [SECRET-FILE]: the plaintext of IMG as qemu-img reads it.
plaintext_of() {
    rm -f "$2"
    qemu-img convert --object "secret,id=sec1,file=${3:-$tmp/pw}" \
        --image-opts "driver=luks,key-secret=sec1,file.filename=$1" -O raw "$2"
}

# --- Reads: qemu-img's images, as qemu-img and nbdkit see them. ---
for spec in "xts256 cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256 nbdkit" \
    "xts128 cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha512 nbdkit" \
    "cbc128 cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha1 nbdkit" \
    "essiv cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha224 -" \
    "ctr cipher-alg=aes-256,cipher-mode=ctr,ivgen-alg=plain64,hash-alg=ripemd160 -" \
    "ecb cipher-alg=aes-128,cipher-mode=ecb,hash-alg=md5 -"; do
    read -r name opts peer <<< "$spec"
    qemu_luks "$name" "$opts"
    start_server --filter=luks file "$tmp/$name.img" passphrase=s3cret
    served_is "$tmp/$name.plain" writable
    check_block_sizes
    note=""
    if [ "$peer" = nbdkit ]; then
        same_served_as_nbdkit --filter=luks file "$tmp/$name.img" passphrase=s3cret
        note=", as nbdkit serves it"
    fi
    echo "$name ($opts): the plaintext qemu-img wrote$note"
done

# --- Reads: cryptsetup's images, the passphrase in key slot 1 only. ---
cryptsetup_luks() {
    truncate -s 8M "$tmp/$1.img"
    cryptsetup luksFormat --type luks1 --batch-mode --pbkdf-force-iterations 1000 $2 \
        --key-file "$tmp/pw" "$tmp/$1.img"
    cryptsetup luksAddKey --batch-mode --pbkdf-force-iterations 1000 --key-file "$tmp/pw" "$tmp/$1.img" "$tmp/pw2"
    cryptsetup luksKillSlot --batch-mode --key-file "$tmp/pw2" "$tmp/$1.img" 0
}
# payload_size IMG: the bytes after the header and key slots, as cryptsetup luksDump says.
payload_size() {
    echo $(($(stat -c %s "$1") - 512 * $(cryptsetup luksDump "$1" | awk '/Payload offset/ {print $3}')))
}
cryptsetup_luks cs-xts "--cipher aes-xts-plain64 --key-size 512 --hash sha512"
cryptsetup_luks cs-essiv "--cipher aes-cbc-essiv:sha256 --key-size 256 --hash sha256"
for name in cs-xts cs-essiv; do
    random_file "$tmp/$name.plain" "$(payload_size "$tmp/$name.img")"
    qemu-img convert -n --object "secret,id=sec0,file=$tmp/pw2" -f raw "$tmp/$name.plain" \
        --target-image-opts "driver=luks,key-secret=sec0,file.filename=$tmp/$name.img"
    start_server --filter=luks file "$tmp/$name.img" "passphrase=+$tmp/pw2"
    served_is "$tmp/$name.plain" writable
    exec 7<"$tmp/pw2"
    start_server --filter=luks file "$tmp/$name.img" passphrase=-7
    exec 7<&-
    served_is "$tmp/$name.plain" writable
    echo "$name: key slot 1 opened by +FILE and -FD, the plaintext qemu-img wrote"
done
same_served_as_nbdkit --filter=luks file "$tmp/cs-xts.img" "passphrase=+$tmp/pw2"

# The key is derived once for all the connections to a disk whose header does not change.
start_server -v --filter=luks file "$tmp/cs-xts.img" "passphrase=+$tmp/pw2"
for i in 1 2 3; do nbdinfo --size "$uri" >/dev/null; done
[ "$(grep -c 'luks: key slot 1 unlocked' "$server_log")" -eq 1 ] || fail "the key was not derived exactly once"

# --- Writes through nbdforge, read back by qemu-img and nbdkit. ---
img="$tmp/xts256.img"
random_file "$tmp/new.plain" 4M
start_server --filter=luks file "$img" passphrase=s3cret
nbdcopy "$tmp/new.plain" "$uri"
# Unaligned writes: the sectors around them keep their other bytes.
qemu-io -f raw "$uri" -c 'write -P 0xab 1000 3000' -c 'write -P 0xcd 4194000 304' \
    -c 'write -P 0xef 700000 1' -c 'write -z 2097152 65536' >/dev/null
python3 - "$tmp/new.plain" <<'EOF'
import sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
d[1000:4000] = b"\xab" * 3000
d[4194000:4194304] = b"\xcd" * 304
d[700000] = 0xef
d[2097152:2097152 + 65536] = bytes(65536)
open(p, "wb").write(d)
EOF
served_is "$tmp/new.plain" writable
stop_server "$server_pid"
plaintext_of "$img" "$tmp/back.plain"
same_file "$tmp/new.plain" "$tmp/back.plain"
start_nbdkit --filter=luks file "$img" passphrase=s3cret
nbdcopy "$uri" "$tmp/nbdkit.out"
same_file "$tmp/new.plain" "$tmp/nbdkit.out"
echo "writes (nbdcopy, unaligned qemu-io): read back the same by qemu-img and nbdkit"

# fio writes and verifies through two connections; qemu-img then reads what the server reads.
start_server --filter=luks file "$tmp/cs-essiv.img" "passphrase=+$tmp/pw2"
fio --name=luks --ioengine=nbd --uri="$uri" --rw=randrw --bs=4k --size=2M --numjobs=2 \
    --iodepth=8 --offset_increment=2M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --verify_state_save=0 --output="$tmp/fio.out" --directory="$tmp" 2>&1
[ "$(grep -Ec 'err= *0' "$tmp/fio.out")" -eq 2 ] || { cat "$tmp/fio.out"; fail "fio failed through luks"; }
rm -f "$tmp/fio.served"
nbdcopy "$uri" "$tmp/fio.served"
stop_server "$server_pid"
plaintext_of "$tmp/cs-essiv.img" "$tmp/fio.back" "$tmp/pw2"
same_file "$tmp/fio.served" "$tmp/fio.back"
echo "fio verify through luks (cbc-essiv); qemu-img reads the same"

# aes-192 (cbc-essiv:sha256), which qemu-img cannot write: written through nbdforge, read back
# the same by a second server.
cryptsetup_luks cs-192 "--cipher aes-cbc-essiv:sha256 --key-size 192 --hash sha1"
random_file "$tmp/192.plain" "$(payload_size "$tmp/cs-192.img")"
start_server --filter=luks file "$tmp/cs-192.img" "passphrase=+$tmp/pw2"
nbdcopy "$tmp/192.plain" "$uri"
stop_server "$server_pid"
cmp -s <(tail -c 1M "$tmp/cs-192.img") <(tail -c 1M "$tmp/192.plain") && fail "aes-192: written in plaintext"
cryptsetup luksDump "$tmp/cs-192.img" | grep -q 'MK bits:.*192' || fail "cryptsetup did not make a 192-bit key"
start_server --filter=luks file "$tmp/cs-192.img" "passphrase=+$tmp/pw2"
served_is "$tmp/192.plain" writable
echo "aes-192-cbc-essiv (cryptsetup): written and read back"

# --- Refused: a wrong passphrase, a corrupt header, LUKSv2, a disk that is not LUKS. ---
# (nbdkit 1.32 refuses each by crashing after its message; what is compared is that neither
# serves the disk.)
truncate -s 20M "$tmp/v2.img"
cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$tmp/pw" "$tmp/v2.img"
# Corrupt headers: the payload, or key slot 0's key material, past the end of the disk.
cp "$tmp/xts256.img" "$tmp/far-payload.img"
printf '\x7f\xff\xff\xff' | dd of="$tmp/far-payload.img" bs=1 seek=104 conv=notrunc status=none
cp "$tmp/xts256.img" "$tmp/far-slot.img"
printf '\x7f\xff\xff\xff' | dd of="$tmp/far-slot.img" bs=1 seek=248 conv=notrunc status=none
for bad in "xts256.img passphrase=wrong wrong.passphrase" "far-payload.img passphrase=s3cret payload.starts" \
    "far-slot.img passphrase=s3cret key.material.of.slot.0" "cs-xts.img passphrase=+$tmp/pw key.slot" \
    "v2.img passphrase=s3cret version.2" "xts256.plain passphrase=s3cret no.LUKS.header"; do
    read -r file pass why <<< "$bad"
    start_nbdkit --filter=luks file "$tmp/$file" "$pass"
    if nbdinfo --size "$uri" >/dev/null 2>&1; then fail "$file $pass: nbdkit serves it"; fi
    start_server --filter=luks file "$tmp/$file" "$pass"
    if nbdinfo --size "$uri" >/dev/null 2>&1; then fail "$file $pass: served"; fi
    kill -0 "$server_pid" || fail "$file: the server died"
    grep -q "luks: .*$why" "$server_log" || fail "$file $pass: no message '$why': $(cat "$server_log")"
    echo "$file $pass: refused, as nbdkit refuses it: $(grep -o 'luks: .*' "$server_log" | head -1)"
done

bad_args --filter=luks file "$tmp/xts256.img" -- "luks" "passphrase"
bad_args --filter=luks file "$tmp/xts256.img" passphrase=+/nonexistent/pw -- "passphrase=+/nonexistent/pw"
bad_args --filter=luks file "$tmp/xts256.img" passphrase=-99 -- "passphrase=-99"
echo OK

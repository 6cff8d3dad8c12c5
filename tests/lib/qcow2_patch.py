"""Patches a qcow2 image the way a truncated or hostile one would look, for the qcow2dec tests.

    python3 qcow2_patch.py IN OUT CASE

CASE names what is changed (see CASES); everything else is left as qemu-img wrote it. The image
must have a single L1 entry and its first clusters allocated (what `qemu-img convert` writes for
a small disk of data).
"""
import struct
import sys

FAR = 1 << 40  # a cluster-aligned offset far past the end of any test image
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62


def main():
    src, dst, case = sys.argv[1:]
    img = bytearray(open(src, "rb").read())
    cluster_bits = struct.unpack_from(">I", img, 20)[0]
    l1_offset = struct.unpack_from(">Q", img, 40)[0]
    l2_offset = struct.unpack_from(">Q", img, l1_offset)[0] & OFFSET_MASK

    def l2_entry(index, value):
        struct.pack_into(">Q", img, l2_offset + 8 * index, value)

    if case == "l1-past-end":          # the L1 table itself is past the end
        struct.pack_into(">Q", img, 40, FAR)
    elif case == "l1-huge":            # an L1 table of 2^31 entries (16 GiB)
        struct.pack_into(">I", img, 36, 0x7FFFFFFF)
    elif case == "l2-past-end":        # the first L2 table is past the end
        struct.pack_into(">Q", img, l1_offset, COPIED | FAR)
    elif case == "data-past-end":      # the second cluster's data is past the end
        l2_entry(1, COPIED | FAR)
    elif case == "compressed-garbage":  # the third cluster is "compressed" random bytes
        l2_entry(2, COMPRESSED | (1 << (62 - (cluster_bits - 8))) | (8 << cluster_bits))
    elif case == "compressed-past-end":  # the fourth cluster is compressed, past the end
        l2_entry(3, COMPRESSED | FAR)
    elif case == "cluster-bits":       # 1 GiB clusters
        struct.pack_into(">I", img, 20, 30)
    elif case == "huge-size":          # a virtual size of 2^60 bytes over a one-entry L1 table
        struct.pack_into(">Q", img, 24, 1 << 60)
    else:
        sys.exit(f"qcow2_patch.py: unknown case {case}")
    open(dst, "wb").write(img)


main()

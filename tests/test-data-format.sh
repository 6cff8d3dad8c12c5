#!/usr/bin/env bash
# The data plugin: for raw=, base64= and the data= format language (bytes in every base,
# offsets, alignment, strings with escapes, words, groups, repeats, slices, names, variables,
# files, scripts, comments), and with size= cutting or extending, the disk is byte for byte
# the one nbdkit serves. Mistakes in the text stop the server before it listens, with a message
# that says what and where.
#
# Fails against nbdkit 1.32 at the checks of messages only: some do not name the data parameter
# ("$nope: variable not found").
# timeout: 300
source "$(dirname "$0")/lib/functions.sh"

printf '0123456789abcdefghij' > "$tmp/file"

same_as_nbdkit data '0 1 2 3 @0x1fe 0x55 0xaa'
same_as_nbdkit data data='0 1 2 3 @^0x200 @-2 le16:0xaa55'
same_as_nbdkit data ' ( 0x55 0xAA )*2048 '
same_as_nbdkit data ' ( "Hello" )*2000 ' size=8192
same_as_nbdkit data '@0x1b8 178 190 207 221 0 0 0 0 2 0 131 32 32 0 1 0 0 0 255 7
                     @0x1fe 85 170' size=1048576
same_as_nbdkit data base64=MTIz size=1M
same_as_nbdkit data raw='Hello, world!'
same_as_nbdkit data raw='Hello, world!' size=5
same_as_nbdkit data '"\x01\x02\t\"\\\n\a" be32:0x1 le64:0x0102030405060708 be16:258 le32:4294967295'
same_as_nbdkit data '( 0x55 0xAA ) -> \boot-signature
                     ( @0x1fe \boot-signature ) -> \sector
                     \sector \sector'
same_as_nbdkit data '1 -> \a ( \a 2 ) -> \b 3 -> \a \b \a'
same_as_nbdkit data '$pattern*16' pattern='0x55 0xAA'
DATA_TEST_VARIABLE='1 2 3 # from the environment' same_as_nbdkit data '$DATA_TEST_VARIABLE*2 4'
same_as_nbdkit data "<$tmp/file <$tmp/file[10:15] <$tmp/file[18:] ( <$tmp/file )*2[5:25]"
same_as_nbdkit data '<( i=0; while :; do printf "%04d" $i; i=$((i+1)); done )[:32768]'
same_as_nbdkit data '<(printf "a(b)c")*3'
same_as_nbdkit data '(1 2 3)[1:] (4 5 6)[:2] "abcdef"[2:4] "xyz"[:] "xyz"[1:1]'
same_as_nbdkit data '@+3 1 @-2 2 # a comment @0 9
                     3'
same_as_nbdkit data '0xff*100 0*100 1*3 0377 010 08'
same_as_nbdkit data '( @4 )*3 9'
same_as_nbdkit data '1 2 3 4 5 @1 ( @2 ) 7'
same_as_nbdkit data '( 1 ( 2 @4 ) 3 )*2'
same_as_nbdkit data '"abc"*3[1:8] ((("x")))*2'
same_as_nbdkit data '@1048576 1 @^65536 2' size=2M
same_as_nbdkit data ''
same_as_nbdkit data '' size=4096

# A written disk keeps its writes, as a RAM disk does.
start_server data '"hello"' size=1M
nbdsh -u "$uri" -c '
h.pwrite(b"HELLO", 1000)
assert h.pread(5, 0) == b"hello"
assert h.pread(5, 1000) == b"HELLO"
'

bad_args data -- raw base64 data
bad_args data '1 2 x' -- data 'parsing error'
bad_args data '( 1' -- data "unmatched '('"
bad_args data '"abc' -- data 'unterminated string'
bad_args data '@^3' -- data 'power of 2'
bad_args data '$nope' -- data 'variable not found'
bad_args data raw=a data=1 -- 'exactly once'
bad_args data raw=a colour=blue -- 'extra parameters'
bad_args data "<$tmp/nonexistent" -- data "$tmp/nonexistent"
echo OK

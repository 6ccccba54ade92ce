#!/usr/bin/env python3
"""Writes a pcap of COUNT 60-byte (64 on the wire) Ethernet/IPv4/UDP frames for the benchmarks.

Frame i: DST_MAC <- SRC_MAC, 198.18.1.2 -> 198.19.(i>>8).(i&255|1), UDP 10000+i -> 5001, TTL 64,
DF, correct IPv4 and UDP checksums. One source port per frame, so a router's flow hash and ECMP
see COUNT flows. Same frames as benches/src/lib.rs `frame(Family::V4, i)`.

usage: udp_pcap.py OUT.pcap DST_MAC [SRC_MAC] [COUNT]
"""
import struct
import sys


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac(s: str) -> bytes:
    b = bytes(int(x, 16) for x in s.split(":"))
    if len(b) != 6:
        raise SystemExit(f"bad MAC {s!r}")
    return b


def frame(i: int, dst: bytes, src: bytes) -> bytes:
    payload = bytes(k & 0xFF for k in range(60 - 14 - 20 - 8))
    sip = bytes([198, 18, 1, 2])
    dip = bytes([198, 19, (i >> 8) & 0xFF, (i & 0xFF) | 1])
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", (10000 + i) & 0xFFFF, 5001, ulen, 0) + payload
    uc = csum(sip + dip + struct.pack("!BBH", 0, 17, ulen) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", uc) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, i & 0xFFFF, 0x4000, 64, 17, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst + src + b"\x08\x00" + ip + udp


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out, dst = sys.argv[1], mac(sys.argv[2])
    src = mac(sys.argv[3]) if len(sys.argv) > 3 else mac("02:00:00:00:00:c1")
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(count):
            fr = frame(i, dst, src)
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)) + fr)


if __name__ == "__main__":
    main()

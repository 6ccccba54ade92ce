//! SCTP common header (RFC 9260 section 3.1) and its CRC32c checksum (RFC 9260 appendix A),
//! plus a chunk walker so conntrack can see INIT / ABORT / SHUTDOWN.

use super::bytes::{read_u16, read_u32, write_u16, write_u32};
use super::error::WireError;

/// CRC32c (Castagnoli), reflected polynomial 0x82F63B78, one table lookup per byte. The table
/// is built at compile time so the crate needs no dependency for it.
pub mod crc32c {
    const POLY: u32 = 0x82f6_3b78;

    const fn make_table() -> [u32; 256] {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    }

    static TABLE: [u32; 256] = make_table();

    /// Feeds `data` into a running (pre-inverted) CRC state.
    #[inline]
    pub fn update(mut state: u32, data: &[u8]) -> u32 {
        for &byte in data {
            state = TABLE[((state ^ u32::from(byte)) & 0xff) as usize] ^ (state >> 8);
        }
        state
    }

    /// The initial state.
    pub const INIT: u32 = 0xffff_ffff;

    /// Finishes a running state into the CRC value.
    #[inline]
    pub fn finish(state: u32) -> u32 {
        !state
    }

    /// CRC32c of one buffer.
    #[inline]
    pub fn checksum(data: &[u8]) -> u32 {
        finish(update(INIT, data))
    }
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const VERIFICATION_TAG: usize = 4;
    pub const CHECKSUM: usize = 8;
    pub const CHUNKS: usize = 12;
}

/// Chunk types of interest to a stateful middlebox.
pub mod chunk_type {
    pub const DATA: u8 = 0;
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SHUTDOWN_ACK: u8 = 8;
    pub const COOKIE_ECHO: u8 = 10;
    pub const COOKIE_ACK: u8 = 11;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// A view of an SCTP packet. The buffer must be exactly the packet (the IP payload): the CRC
/// covers every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SctpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SctpPacket<T> {
    pub const HEADER_LEN: usize = field::CHUNKS;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    #[inline]
    pub fn verification_tag(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERIFICATION_TAG)
    }

    /// The stored CRC32c. It travels least-significant byte first (RFC 9260 appendix A), unlike
    /// every other field.
    #[inline]
    pub fn checksum(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::CHECKSUM..field::CHUNKS];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// CRC32c of the packet with the checksum field taken as zero.
    pub fn compute_checksum(&self) -> u32 {
        let buf = self.buffer.as_ref();
        let state = crc32c::update(crc32c::INIT, &buf[..field::CHECKSUM]);
        let state = crc32c::update(state, &[0; 4]);
        crc32c::finish(crc32c::update(state, &buf[field::CHUNKS..]))
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        self.compute_checksum() == self.checksum()
    }

    /// The chunk bytes after the common header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::CHUNKS..]
    }

    #[inline]
    pub fn chunks(&self) -> SctpChunkIter<'_> {
        SctpChunkIter {
            rest: self.payload(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SctpPacket<T> {
    /// Sets the source port. SCTP has no incremental checksum: call [`Self::fill_checksum`].
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    /// Sets the destination port. SCTP has no incremental checksum: call [`Self::fill_checksum`].
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    #[inline]
    pub fn set_verification_tag(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::VERIFICATION_TAG, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u32) {
        self.buffer.as_mut()[field::CHECKSUM..field::CHUNKS].copy_from_slice(&value.to_le_bytes());
    }

    pub fn fill_checksum(&mut self) {
        let crc = self.compute_checksum();
        self.set_checksum(crc);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::CHUNKS..]
    }
}

/// One chunk: type, flags and value (without the 4-byte chunk header and padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpChunk<'a> {
    pub chunk_type: u8,
    pub flags: u8,
    pub value: &'a [u8],
}

/// Iterates over chunks. A chunk length below 4 or past the buffer yields one
/// [`WireError::BadLength`] and ends the iteration. The final chunk's padding may be missing.
#[derive(Debug, Clone)]
pub struct SctpChunkIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SctpChunkIter<'a> {
    type Item = Result<SctpChunk<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        }
        let len = usize::from(read_u16(self.rest, 2));
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(WireError::BadLength));
        }
        let chunk = SctpChunk {
            chunk_type: self.rest[0],
            flags: self.rest[1],
            value: &self.rest[4..len],
        };
        let padded = (len + 3) & !3;
        self.rest = self.rest.get(padded..).unwrap_or(&[]);
        Some(Ok(chunk))
    }
}

/// The SCTP common header as a plain value, borrowing the chunk bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SctpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    pub chunks: &'a [u8],
}

impl<'a> SctpRepr<'a> {
    /// Parses a packet, verifying the CRC32c and that the chunks are well formed and present
    /// (RFC 9260 section 3: a packet carries at least one chunk).
    pub fn parse<T: AsRef<[u8]>>(packet: &'a SctpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        let mut count = 0usize;
        for chunk in packet.chunks() {
            chunk?;
            count += 1;
        }
        if count == 0 {
            return Err(WireError::Truncated);
        }
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            verification_tag: packet.verification_tag(),
            chunks: packet.payload(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        SctpPacket::<&[u8]>::HEADER_LEN
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.chunks.len()
    }

    /// Writes header and chunks and fills the CRC. The buffer must be exactly
    /// [`Self::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut SctpPacket<T>,
    ) -> Result<(), WireError> {
        match packet.buffer.as_ref().len() {
            len if len < self.buffer_len() => return Err(WireError::BufferTooSmall),
            len if len > self.buffer_len() => return Err(WireError::BadLength),
            _ => {}
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_verification_tag(self.verification_tag);
        packet.payload_mut().copy_from_slice(self.chunks);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c::checksum(b"123456789"), 0xe306_9283);
        // RFC 3720 appendix B.4: 32 bytes of zeros.
        assert_eq!(crc32c::checksum(&[0; 32]), 0x8a91_36aa);
    }

    /// An INIT from port 5000 to 36412 (initiate tag 0x11223344, a_rwnd 106496, 10/65535
    /// streams, initial TSN 1); CRC verified by tshark.
    /// The CRC value is 0xd1bb2f2a, stored least significant byte first.
    const INIT: &str = "1388 8e3c 00000000 2a2fbbd1
        0100 0014 11223344 0001a000 000a ffff 00000001";

    #[test]
    fn parse_init() {
        let bytes = hex(INIT);
        let packet = SctpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.checksum(), 0xd1bb_2f2a);
        let repr = SctpRepr::parse(&packet).unwrap();
        assert_eq!(
            (repr.src_port, repr.dst_port, repr.verification_tag),
            (5000, 36412, 0)
        );
        let chunk = packet.chunks().next().unwrap().unwrap();
        assert_eq!(
            (chunk.chunk_type, chunk.value.len()),
            (chunk_type::INIT, 16)
        );
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut SctpPacket::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(out, bytes);
        assert_prefixes_rejected(&bytes, |b| {
            SctpRepr::parse(&SctpPacket::new_checked(b)?).map(|_| ())
        });

        let mut corrupt = bytes.clone();
        corrupt[20] ^= 1;
        let packet = SctpPacket::new_checked(&corrupt[..]).unwrap();
        assert_eq!(SctpRepr::parse(&packet), Err(WireError::BadChecksum));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut data = data;
            if data.len() >= 12 {
                SctpPacket::new_unchecked(&mut data[..]).fill_checksum();
            }
            if let Ok(packet) = SctpPacket::new_checked(&data[..]) {
                let _ = SctpRepr::parse(&packet);
                let _ = packet.chunks().count();
            }
        }
    }
}

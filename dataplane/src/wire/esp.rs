//! ESP (RFC 4303): the cleartext header, the trailer found at the end of the decrypted
//! payload, and UDP encapsulation for NAT traversal (RFC 3948).
//!
//! Everything between the header and the ICV is ciphertext to this module; the IPsec node
//! decrypts it (cryptodev or software) and hands the plaintext to [`EspTrailer::parse`].

use super::bytes::{read_u32, write_u32};
use super::error::WireError;
use super::ip::IpProtocol;

mod field {
    pub const SPI: usize = 0;
    pub const SEQUENCE: usize = 4;
    pub const PAYLOAD: usize = 8;
}

/// A view of an ESP packet: SPI, sequence number, then opaque IV + ciphertext + ICV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

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

    /// Security Parameters Index: with the destination, selects the inbound SA.
    #[inline]
    pub fn spi(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SPI)
    }

    /// The low 32 bits of the (possibly extended) sequence number.
    #[inline]
    pub fn sequence_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE)
    }

    /// IV, ciphertext and ICV, as the transform defines them.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EspPacket<T> {
    #[inline]
    pub fn set_spi(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SPI, value);
    }

    #[inline]
    pub fn set_sequence_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQUENCE, value);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The cleartext ESP header as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspRepr {
    pub spi: u32,
    pub sequence_number: u32,
}

impl EspRepr {
    /// Parses the header. SPI 0 is [`WireError::Malformed`]: RFC 4303 section 2.1 reserves it
    /// for local use and forbids sending it.
    pub fn parse<T: AsRef<[u8]>>(packet: &EspPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.spi() == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Self {
            spi: packet.spi(),
            sequence_number: packet.sequence_number(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        EspPacket::<&[u8]>::HEADER_LEN
    }

    #[inline]
    pub fn buffer_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut EspPacket<T>,
    ) -> Result<(), WireError> {
        if packet.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_spi(self.spi);
        packet.set_sequence_number(self.sequence_number);
        Ok(())
    }
}

/// The ESP trailer at the end of the plaintext: padding, pad length, next header
/// (RFC 4303 section 2.4-2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspTrailer {
    pub pad_len: u8,
    /// Protocol of the protected payload: IPIP/IPV6 in tunnel mode, TCP/UDP/... in transport
    /// mode, NO_NEXT (59) for a traffic-flow-confidentiality dummy packet.
    pub next_header: IpProtocol,
}

impl EspTrailer {
    /// Pad Length and Next Header.
    pub const LEN: usize = 2;

    /// Splits decrypted plaintext (without IV or ICV) into the protected payload and the
    /// trailer. The padding must be the default monotonic 1, 2, 3, ... sequence, which RFC 4303
    /// section 2.4 lets the receiver check; anything else is [`WireError::BadPadding`] (a
    /// cheap sign of a wrong key or a corrupted packet that survived integrity checks).
    pub fn parse(plaintext: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let trailer_at = plaintext
            .len()
            .checked_sub(Self::LEN)
            .ok_or(WireError::Truncated)?;
        let pad_len = plaintext[trailer_at];
        let next_header = IpProtocol(plaintext[trailer_at + 1]);
        let payload_len = trailer_at
            .checked_sub(usize::from(pad_len))
            .ok_or(WireError::BadLength)?;
        let padding = &plaintext[payload_len..trailer_at];
        let monotonic = padding
            .iter()
            .zip(1u8..)
            .all(|(&byte, expected)| byte == expected);
        if !monotonic {
            return Err(WireError::BadPadding);
        }
        Ok((
            Self {
                pad_len,
                next_header,
            },
            &plaintext[..payload_len],
        ))
    }

    /// The trailer for `payload_len` bytes of payload, padded so that payload plus trailer is
    /// a multiple of `block_size` (at least 4, as RFC 4303 section 2.4 requires for the
    /// 32-bit alignment of the ICV). `block_size` is the cipher block size, or 1 for AEAD
    /// stream modes such as AES-GCM.
    pub fn for_payload(payload_len: usize, block_size: usize, next_header: IpProtocol) -> Self {
        let align = block_size.clamp(4, 256);
        let unpadded = payload_len % align + Self::LEN;
        let pad_len = (align - unpadded % align) % align;
        Self {
            // `align` ≤ 256 makes this ≤ 255.
            pad_len: pad_len as u8,
            next_header,
        }
    }

    /// Padding plus pad length plus next header.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.pad_len) + Self::LEN
    }

    /// Never true: a trailer is at least two bytes. Present for clippy's `len_without_is_empty`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes padding and trailer into `tail`, which must be exactly [`Self::len`] bytes.
    pub fn emit(&self, tail: &mut [u8]) -> Result<(), WireError> {
        if tail.len() != self.len() {
            return Err(WireError::BadLength);
        }
        let pad = usize::from(self.pad_len);
        for (byte, value) in tail[..pad].iter_mut().zip(1u8..) {
            *byte = value;
        }
        tail[pad] = self.pad_len;
        tail[pad + 1] = self.next_header.0;
        Ok(())
    }
}

/// The standard port for UDP-encapsulated ESP and IKE (RFC 3948).
pub const UDP_ENCAP_PORT: u16 = 4500;

/// What a UDP datagram on port 4500 carries (RFC 3948 section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpEncapsulated {
    /// An ESP packet (first four bytes: a non-zero SPI).
    Esp,
    /// An IKE message, behind the four zero bytes of the non-ESP marker.
    Ike,
    /// A one-byte 0xff NAT-keepalive (RFC 3948 section 2.3), to be dropped.
    Keepalive,
}

/// Classifies the payload of a UDP datagram received on [`UDP_ENCAP_PORT`].
pub fn classify_udp_encap(payload: &[u8]) -> Result<UdpEncapsulated, WireError> {
    match payload {
        [0xff] => Ok(UdpEncapsulated::Keepalive),
        [0, 0, 0, 0, ..] => Ok(UdpEncapsulated::Ike),
        _ if payload.len() >= EspPacket::<&[u8]>::HEADER_LEN => Ok(UdpEncapsulated::Esp),
        _ => Err(WireError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip() {
        // SPI 0x0000_1000, sequence 5, then 16 bytes of (opaque) IV.
        let bytes = hex("00001000 00000005 000102030405060708090a0b0c0d0e0f");
        let packet = EspPacket::new_checked(&bytes[..]).unwrap();
        let repr = EspRepr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            EspRepr {
                spi: 0x1000,
                sequence_number: 5
            }
        );
        assert_eq!(packet.payload().len(), 16);
        let mut out = vec![0u8; repr.buffer_len(16)];
        let mut emitted = EspPacket::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted).unwrap();
        emitted.payload_mut().copy_from_slice(packet.payload());
        assert_eq!(out, bytes);
        assert_prefixes_rejected(&bytes[..8], |b| {
            EspRepr::parse(&EspPacket::new_checked(b)?).map(|_| ())
        });
        let zero_spi = hex("00000000 00000001");
        assert_eq!(
            EspRepr::parse(&EspPacket::new_checked(&zero_spi[..]).unwrap()),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn trailer_parse() {
        // Tunnel-mode plaintext: a 5-byte inner fragment, padding 1 2 3 4 5, pad length 5,
        // next header 4 (IPv4).
        let plaintext = hex("4500001c00 0102030405 05 04");
        let (trailer, payload) = EspTrailer::parse(&plaintext).unwrap();
        assert_eq!(
            trailer,
            EspTrailer {
                pad_len: 5,
                next_header: IpProtocol::IPIP
            }
        );
        assert_eq!(payload, &plaintext[..5]);

        let no_padding = hex("aabb 00 3b");
        let (trailer, payload) = EspTrailer::parse(&no_padding).unwrap();
        assert_eq!(
            (trailer.pad_len, trailer.next_header, payload.len()),
            (0, IpProtocol::NO_NEXT, 2)
        );

        assert_eq!(
            EspTrailer::parse(&hex("aa 01 03 02 04")),
            Err(WireError::BadPadding)
        );
        assert_eq!(
            EspTrailer::parse(&hex("01 02 05 04")),
            Err(WireError::BadLength)
        );
        assert_eq!(EspTrailer::parse(&hex("04")), Err(WireError::Truncated));
    }

    #[test]
    fn trailer_emit() {
        for payload_len in 0..40 {
            for block in [1, 4, 8, 16] {
                let trailer = EspTrailer::for_payload(payload_len, block, IpProtocol::IPV6);
                let total = payload_len + trailer.len();
                assert_eq!(total % block.max(4), 0);
                assert!(usize::from(trailer.pad_len) < block.max(4));
                let mut plaintext = vec![0x77u8; total];
                trailer.emit(&mut plaintext[payload_len..]).unwrap();
                let (parsed, payload) = EspTrailer::parse(&plaintext).unwrap();
                assert_eq!((parsed, payload.len()), (trailer, payload_len));
            }
        }
    }

    #[test]
    fn udp_encapsulation() {
        assert_eq!(classify_udp_encap(&[0xff]), Ok(UdpEncapsulated::Keepalive));
        assert_eq!(
            classify_udp_encap(&hex("00000000 1122334455667788")),
            Ok(UdpEncapsulated::Ike)
        );
        assert_eq!(
            classify_udp_encap(&hex("00001000 00000001")),
            Ok(UdpEncapsulated::Esp)
        );
        assert_eq!(classify_udp_encap(&hex("0000")), Err(WireError::Truncated));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(packet) = EspPacket::new_checked(&data[..]) {
                let _ = EspRepr::parse(&packet);
            }
            let _ = EspTrailer::parse(&data);
            let _ = classify_udp_encap(&data);
        }
    }
}

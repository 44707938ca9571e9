//! The probe datagram: what one weftd sends another's probe port, and the echo it gets.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "WFTP"
//!      4     1  version (1)
//!      5     1  kind: 1 request, 2 reply
//!      6     2  zero
//!      8     8  id, chosen by the prober (big-endian), echoed unchanged
//!     16     …  zero padding up to the size probed
//! ```
//!
//! A reply is the request with the kind changed, at the request's length: the answer to a
//! probe at the pod MTU is as large as the probe, so both directions are tested, and the
//! responder never sends more than it was sent (no amplification).

/// The magic bytes that open every probe datagram.
pub const MAGIC: [u8; 4] = *b"WFTP";
/// The format's version.
pub const VERSION: u8 = 1;
/// The header's length: the smallest probe.
pub const HEADER_LEN: usize = 16;

/// The largest UDP payload a probe may have (an IPv4 datagram's limit).
pub const MAX_LEN: usize = 65_507;

/// Bytes the IP and UDP headers add to a probe's payload: a probe of IP packet size `size`
/// carries `size - ip_udp_overhead` bytes of payload.
pub fn ip_udp_overhead(family: weft_backends::IpFamily) -> usize {
    match family {
        weft_backends::IpFamily::V4 => 20 + 8,
        weft_backends::IpFamily::V6 => 40 + 8,
    }
}

/// Request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 1,
    Reply = 2,
}

/// A probe datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    pub id: u64,
    /// The whole payload's length (header and padding).
    pub len: usize,
}

/// Why a datagram is not a probe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{0} bytes, shorter than a probe header ({HEADER_LEN})")]
    Short(usize),
    #[error("no probe magic")]
    Magic,
    #[error("probe version {0} (this weftd speaks {VERSION})")]
    Version(u8),
    #[error("unknown probe kind {0}")]
    Kind(u8),
}

impl Probe {
    /// A request with `id`, `len` bytes long (at least the header).
    pub fn request(id: u64, len: usize) -> Probe {
        Probe {
            kind: Kind::Request,
            id,
            len: len.clamp(HEADER_LEN, MAX_LEN),
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len.max(HEADER_LEN)];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[8..16].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    /// Read a datagram.
    pub fn decode(b: &[u8]) -> Result<Probe, WireError> {
        if b.len() < HEADER_LEN {
            return Err(WireError::Short(b.len()));
        }
        if b[..4] != MAGIC {
            return Err(WireError::Magic);
        }
        if b[4] != VERSION {
            return Err(WireError::Version(b[4]));
        }
        let kind = match b[5] {
            1 => Kind::Request,
            2 => Kind::Reply,
            k => return Err(WireError::Kind(k)),
        };
        let id = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
        Ok(Probe {
            kind,
            id,
            len: b.len(),
        })
    }
}

/// The answer to a received datagram, turned into a reply in place: Some(length to send)
/// for a request, None for anything else (a reply, garbage), which gets no answer.
pub fn answer_in_place(b: &mut [u8]) -> Option<usize> {
    match Probe::decode(b) {
        Ok(Probe {
            kind: Kind::Request,
            ..
        }) => {
            b[5] = Kind::Reply as u8;
            Some(b.len())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_with_itself_as_a_reply_at_its_length() {
        let req = Probe::request(0x0102_0304_0506_0708, 1422);
        let mut b = req.encode();
        assert_eq!(b.len(), 1422);
        assert_eq!(
            &b[..16],
            &[b'W', b'F', b'T', b'P', 1, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(answer_in_place(&mut b), Some(1422));
        assert_eq!(
            Probe::decode(&b).unwrap(),
            Probe {
                kind: Kind::Reply,
                id: req.id,
                len: 1422
            }
        );
        // A reply is never answered (two weftds cannot ping-pong).
        assert_eq!(answer_in_place(&mut b), None);
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        assert_eq!(Probe::decode(b"WFTP"), Err(WireError::Short(4)));
        let mut b = Probe::request(1, 16).encode();
        b[0] = b'X';
        assert_eq!(Probe::decode(&b), Err(WireError::Magic));
        let mut b = Probe::request(1, 16).encode();
        b[4] = 9;
        assert_eq!(Probe::decode(&b), Err(WireError::Version(9)));
        b[4] = VERSION;
        b[5] = 7;
        assert_eq!(Probe::decode(&b), Err(WireError::Kind(7)));
        assert_eq!(answer_in_place(&mut b), None);
        assert_eq!(Probe::request(1, 3).len, HEADER_LEN);
    }
}

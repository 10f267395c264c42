//! The Confluent wire format: magic byte 0, the schema id as a 4-byte
//! big-endian integer, then the Avro binary body.

/// The first byte of every framed record.
pub const MAGIC_BYTE: u8 = 0;

/// Why bytes are not a framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("record is {0} bytes long; the wire format needs at least 5")]
    TooShort(usize),
    #[error("record starts with byte {0:#04x}, not the wire format's magic byte 0")]
    BadMagic(u8),
}

/// Frames an Avro body written with schema `schema_id`.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed record into its schema id and Avro body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if bytes.len() < 5 {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(WireError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_magic_then_big_endian_id() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(unframe(&framed).unwrap(), (0x0102_0304, &b"body"[..]));
    }

    #[test]
    fn rejects_short_and_foreign_bytes() {
        assert_eq!(unframe(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(unframe(b"{\"id\": 1}"), Err(WireError::BadMagic(b'{')));
    }
}

//! Lower-case hexadecimal encoding for the few places tde shows or stores bytes as text.

use crate::error::{Error, Result};

/// Encodes bytes as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Decodes hex (either case).
///
/// # Errors
/// [`Error::Format`] for odd length or a non-hex character.
pub fn decode(text: &str) -> Result<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return Err(Error::Format {
            what: "hex string",
            detail: "odd number of digits".into(),
        });
    }
    text.chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

fn digit(c: u8) -> Result<u8> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(Error::Format {
            what: "hex string",
            detail: format!("{:?} is not a hex digit", c as char),
        }),
    }
}

/// `#[serde(with = "crate::hex::serde")]` for byte vectors stored as hex strings.
pub(crate) mod serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xfe, 0xff];
        assert_eq!(super::encode(&bytes), "00017f80feff");
        assert_eq!(super::decode("00017F80feff").unwrap(), bytes);
        assert!(super::decode("abc").is_err());
        assert!(super::decode("zz").is_err());
    }
}

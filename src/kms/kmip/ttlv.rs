//! KMIP's Tag-Type-Length-Value encoding (KMIP 1.4 §9.1): just the items tde sends and
//! reads. A response is hostile input until proven otherwise: lengths are checked
//! against what is left, nesting is bounded, padding must be zero.

use zeroize::Zeroizing;

/// Item types.
const STRUCTURE: u8 = 0x01;
const INTEGER: u8 = 0x02;
const LONG_INTEGER: u8 = 0x03;
const BIG_INTEGER: u8 = 0x04;
const ENUMERATION: u8 = 0x05;
const BOOLEAN: u8 = 0x06;
const TEXT_STRING: u8 = 0x07;
const BYTE_STRING: u8 = 0x08;
const DATE_TIME: u8 = 0x09;
const INTERVAL: u8 = 0x0A;

/// Deepest nesting accepted in a response.
const MAX_DEPTH: usize = 16;

/// A value. Byte strings may hold key material and are wiped when dropped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    Text(String),
    Bytes(Zeroizing<Vec<u8>>),
    DateTime(i64),
    Interval(u32),
}

/// A tagged item.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) tag: u32,
    pub(super) value: Value,
}

impl Item {
    pub(super) fn structure(tag: u32, items: Vec<Item>) -> Item {
        Item {
            tag,
            value: Value::Structure(items),
        }
    }

    pub(super) fn int(tag: u32, v: i32) -> Item {
        Item {
            tag,
            value: Value::Integer(v),
        }
    }

    pub(super) fn enumeration(tag: u32, v: u32) -> Item {
        Item {
            tag,
            value: Value::Enumeration(v),
        }
    }

    pub(super) fn boolean(tag: u32, v: bool) -> Item {
        Item {
            tag,
            value: Value::Boolean(v),
        }
    }

    pub(super) fn text(tag: u32, v: &str) -> Item {
        Item {
            tag,
            value: Value::Text(v.to_owned()),
        }
    }

    pub(super) fn bytes(tag: u32, v: &[u8]) -> Item {
        Item {
            tag,
            value: Value::Bytes(Zeroizing::new(v.to_vec())),
        }
    }

    /// The first child with `tag`.
    pub(super) fn get(&self, tag: u32) -> Option<&Item> {
        self.children().iter().find(|i| i.tag == tag)
    }

    /// Every child with `tag`.
    pub(super) fn all(&self, tag: u32) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |i| i.tag == tag)
    }

    pub(super) fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    pub(super) fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub(super) fn as_enum(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }

    pub(super) fn as_date(&self) -> Option<i64> {
        match self.value {
            Value::DateTime(v) => Some(v),
            _ => None,
        }
    }

    /// Appends the encoding of this item to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let head = out.len();
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        let (kind, body): (u8, &[u8]);
        let scratch;
        match &self.value {
            Value::Structure(items) => {
                out.push(STRUCTURE);
                out.extend_from_slice(&[0; 4]);
                let start = out.len();
                for item in items {
                    item.encode(out);
                }
                let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
                out[head + 4..head + 8].copy_from_slice(&len.to_be_bytes());
                return;
            }
            Value::Integer(v) => {
                scratch = v.to_be_bytes().to_vec();
                (kind, body) = (INTEGER, &scratch);
            }
            Value::LongInteger(v) => {
                scratch = v.to_be_bytes().to_vec();
                (kind, body) = (LONG_INTEGER, &scratch);
            }
            Value::BigInteger(v) => (kind, body) = (BIG_INTEGER, v),
            Value::Enumeration(v) => {
                scratch = v.to_be_bytes().to_vec();
                (kind, body) = (ENUMERATION, &scratch);
            }
            Value::Boolean(v) => {
                scratch = u64::from(*v).to_be_bytes().to_vec();
                (kind, body) = (BOOLEAN, &scratch);
            }
            Value::Text(s) => (kind, body) = (TEXT_STRING, s.as_bytes()),
            Value::Bytes(b) => (kind, body) = (BYTE_STRING, b),
            Value::DateTime(v) => {
                scratch = v.to_be_bytes().to_vec();
                (kind, body) = (DATE_TIME, &scratch);
            }
            Value::Interval(v) => {
                scratch = v.to_be_bytes().to_vec();
                (kind, body) = (INTERVAL, &scratch);
            }
        }
        out.push(kind);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + padding(body.len()), 0);
    }

    /// Decodes one item that fills `bytes` exactly.
    pub(super) fn decode(bytes: &[u8]) -> Result<Item, String> {
        let (item, used) = decode_at(bytes, 0)?;
        if used != bytes.len() {
            return Err(format!("{} bytes after the message", bytes.len() - used));
        }
        Ok(item)
    }
}

fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// The item at the start of `bytes` and the bytes it used (padding included).
fn decode_at(bytes: &[u8], depth: usize) -> Result<(Item, usize), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let head = bytes.get(..8).ok_or("truncated item header")?;
    let tag = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let kind = head[3];
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let body = bytes
        .get(8..8usize.checked_add(len).ok_or("length overflows")?)
        .ok_or_else(|| format!("item {tag:06x}: length {len} runs past the message"))?;
    let fixed = |n: usize| -> Result<&[u8], String> {
        if len == n {
            Ok(body)
        } else {
            Err(format!("item {tag:06x}: length {len}, expected {n}"))
        }
    };
    let value = match kind {
        STRUCTURE => {
            let mut items = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let (item, used) = decode_at(&body[at..], depth + 1)?;
                items.push(item);
                at += used;
            }
            Value::Structure(items)
        }
        INTEGER => Value::Integer(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "int")?)),
        ENUMERATION => Value::Enumeration(u32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "enum")?)),
        INTERVAL => Value::Interval(u32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "interval")?)),
        LONG_INTEGER => Value::LongInteger(i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "long")?)),
        DATE_TIME => Value::DateTime(i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "date")?)),
        BOOLEAN => Value::Boolean(u64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "bool")?) != 0),
        BIG_INTEGER => Value::BigInteger(body.to_vec()),
        TEXT_STRING => Value::Text(
            String::from_utf8(body.to_vec()).map_err(|_| format!("item {tag:06x}: text is not UTF-8"))?,
        ),
        BYTE_STRING => Value::Bytes(Zeroizing::new(body.to_vec())),
        other => return Err(format!("item {tag:06x}: unknown type {other:#04x}")),
    };
    let pad = if kind == STRUCTURE { 0 } else { padding(len) };
    let end = 8 + len + pad;
    let tail = bytes
        .get(8 + len..end)
        .ok_or_else(|| format!("item {tag:06x}: padding runs past the message"))?;
    if tail.iter().any(|b| *b != 0) {
        return Err(format!("item {tag:06x}: non-zero padding"));
    }
    Ok((Item { tag, value }, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KMIP 1.4 test vectors (Key Management Interoperability Protocol Specification
    /// §9.1.2, "Examples").
    #[test]
    fn encodes_the_specifications_examples() {
        let hex = |item: Item| {
            let mut out = Vec::new();
            item.encode(&mut out);
            out.iter().map(|b| format!("{b:02X}")).collect::<String>()
        };
        assert_eq!(hex(Item::int(0x420020, 8)), "42002002000000040000000800000000");
        assert_eq!(
            hex(Item::enumeration(0x420020, 255)),
            "4200200500000004000000FF00000000"
        );
        assert_eq!(
            hex(Item::boolean(0x420020, true)),
            "42002006000000080000000000000001"
        );
        assert_eq!(
            hex(Item::text(0x420020, "Hello World")),
            "420020070000000B48656C6C6F20576F726C640000000000"
        );
        assert_eq!(
            hex(Item::bytes(0x420020, &[1, 2, 3])),
            "42002008000000030102030000000000"
        );
        assert_eq!(
            hex(Item::structure(
                0x420020,
                vec![Item::enumeration(0x420004, 254), Item::int(0x420005, 255)]
            )),
            "42002001000000204200040500000004000000FE000000004200050200000004000000FF00000000"
        );
    }

    #[test]
    fn round_trips_and_refuses_malformed_input() {
        let msg = Item::structure(
            0x420078,
            vec![
                Item::text(0x420094, "key-1"),
                Item::bytes(0x4200C2, &[7; 33]),
                Item::structure(0x42002B, vec![Item::enumeration(0x420011, 9)]),
            ],
        );
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        assert_eq!(Item::decode(&bytes).unwrap(), msg);
        // Truncated anywhere, or with trailing bytes, or a length that lies: refused.
        for cut in 0..bytes.len() {
            assert!(Item::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(Item::decode(&long).is_err());
        let mut lying = bytes.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Item::decode(&lying).is_err());
        let mut padded = bytes;
        let last = padded.len() - 1;
        padded[last] = 1;
        assert!(Item::decode(&padded).is_err(), "non-zero padding");
        // Deep nesting is refused before it exhausts the stack.
        let mut deep = Item::int(0x420001, 1);
        for _ in 0..40 {
            deep = Item::structure(0x420001, vec![deep]);
        }
        let mut bytes = Vec::new();
        deep.encode(&mut bytes);
        assert!(Item::decode(&bytes).unwrap_err().contains("deeply"));
    }
}

//! Rule parameters: typed values, and their wire encoding for `vigil_configure`.
//!
//! ```text
//! repeated: type u8 (0 int, 1 float, 2 bool, 3 str) | name_len u16 | name | value
//! value:    int i64 | float f64 | bool u8 | str: len u32, bytes
//! ```

use core::fmt;

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(untagged))]
pub enum ParamValue {
    /// A boolean flag.
    Bool(bool),
    /// An integer, e.g. an amount in minor units.
    Int(i64),
    /// A floating-point number, e.g. a ratio (never money).
    Float(f64),
    /// A string.
    Str(String),
}

impl ParamValue {
    /// The type of this value.
    pub fn ty(&self) -> crate::ParamType {
        match self {
            ParamValue::Bool(_) => crate::ParamType::Bool,
            ParamValue::Int(_) => crate::ParamType::Int,
            ParamValue::Float(_) => crate::ParamType::Float,
            ParamValue::Str(_) => crate::ParamType::Str,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Why a parameter block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError;

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed parameter block")
    }
}

impl std::error::Error for DecodeError {}

/// Appends one parameter to `out`.
///
/// # Panics
/// When the name exceeds 64 KiB or a string value exceeds 4 GiB.
pub fn encode_one(name: &str, value: &ParamValue, out: &mut Vec<u8>) {
    let tag = match value {
        ParamValue::Int(_) => 0u8,
        ParamValue::Float(_) => 1,
        ParamValue::Bool(_) => 2,
        ParamValue::Str(_) => 3,
    };
    out.push(tag);
    let name_len = u16::try_from(name.len()).expect("parameter name under 64 KiB");
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    match value {
        ParamValue::Int(i) => out.extend_from_slice(&i.to_le_bytes()),
        ParamValue::Float(x) => out.extend_from_slice(&x.to_le_bytes()),
        ParamValue::Bool(b) => out.push(u8::from(*b)),
        ParamValue::Str(s) => {
            let len = u32::try_from(s.len()).expect("parameter value under 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Decodes a whole parameter block.
///
/// # Errors
/// [`DecodeError`] when the block is truncated or holds an unknown type tag.
pub fn decode(mut buf: &[u8]) -> Result<Vec<(String, ParamValue)>, DecodeError> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if buf.len() < n {
            return Err(DecodeError);
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Ok(head)
    }
    fn utf8(b: &[u8]) -> Result<String, DecodeError> {
        core::str::from_utf8(b).map(str::to_owned).map_err(|_| DecodeError)
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = take(&mut buf, 1)?[0];
        let name_len = u16::from_le_bytes(take(&mut buf, 2)?.try_into().map_err(|_| DecodeError)?);
        let name = utf8(take(&mut buf, usize::from(name_len))?)?;
        let eight =
            |buf: &mut &[u8]| -> Result<[u8; 8], DecodeError> { take(buf, 8)?.try_into().map_err(|_| DecodeError) };
        let value = match tag {
            0 => ParamValue::Int(i64::from_le_bytes(eight(&mut buf)?)),
            1 => ParamValue::Float(f64::from_le_bytes(eight(&mut buf)?)),
            2 => ParamValue::Bool(take(&mut buf, 1)?[0] != 0),
            3 => {
                let len = u32::from_le_bytes(take(&mut buf, 4)?.try_into().map_err(|_| DecodeError)?);
                ParamValue::Str(utf8(take(&mut buf, len as usize)?)?)
            }
            _ => return Err(DecodeError),
        };
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips() {
        let params = vec![
            ("max_amount".to_owned(), ParamValue::Int(-5)),
            ("ratio".to_owned(), ParamValue::Float(0.25)),
            ("on".to_owned(), ParamValue::Bool(true)),
            ("mode".to_owned(), ParamValue::Str("loop".into())),
        ];
        let mut buf = Vec::new();
        for (n, v) in &params {
            encode_one(n, v, &mut buf);
        }
        assert_eq!(decode(&buf), Ok(params));
    }

    #[test]
    fn truncated_blocks_are_errors() {
        let mut buf = Vec::new();
        encode_one("mode", &ParamValue::Str("loop".into()), &mut buf);
        for cut in 1..buf.len() {
            assert_eq!(decode(&buf[..cut]), Err(DecodeError), "cut at {cut}");
        }
    }
}

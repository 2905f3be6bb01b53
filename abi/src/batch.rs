//! The layout of a batch call's input buffer.
//!
//! The buffer starts with a table of `count` entries of [`ENTRY`] bytes, one
//! per event: the event's offset from the start of the buffer and its length,
//! both `u32` little-endian. The events follow the table, each an encoded
//! event ([`crate::event`]) with its feature block, as a single call would
//! receive it.

/// Bytes of one table entry.
pub const ENTRY: usize = 8;

/// Writes entry `i` of the table at the start of `buf`.
///
/// # Panics
/// When `buf` is shorter than the table's first `i + 1` entries.
pub fn write_entry(buf: &mut [u8], i: usize, offset: u32, len: u32) {
    let at = i * ENTRY;
    buf[at..at + 4].copy_from_slice(&offset.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// Event `i`'s bytes: the range entry `i` of the table names, or `None` when
/// the entry or the range lies outside `buf`.
#[inline]
pub fn event(buf: &[u8], i: usize) -> Option<&[u8]> {
    let at = i.checked_mul(ENTRY)?;
    let entry = buf.get(at..at.checked_add(ENTRY)?)?;
    let offset = u32::from_le_bytes(entry[..4].try_into().ok()?) as usize;
    let len = u32::from_le_bytes(entry[4..].try_into().ok()?) as usize;
    buf.get(offset..offset.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_the_events_they_were_written_for() {
        let mut buf = vec![0u8; 2 * ENTRY + 5];
        buf[2 * ENTRY..].copy_from_slice(b"abcde");
        write_entry(&mut buf, 0, 16, 2);
        write_entry(&mut buf, 1, 18, 3);
        assert_eq!(event(&buf, 0), Some(&b"ab"[..]));
        assert_eq!(event(&buf, 1), Some(&b"cde"[..]));
    }

    #[test]
    fn an_entry_outside_the_buffer_names_nothing() {
        let mut buf = vec![0u8; 2 * ENTRY];
        write_entry(&mut buf, 0, 8, 9);
        write_entry(&mut buf, 1, u32::MAX, u32::MAX);
        assert_eq!(event(&buf, 0), None, "range past the end");
        assert_eq!(event(&buf, 1), None, "offset + len overflows");
        assert_eq!(event(&buf, 2), None, "entry past the end");
    }
}

//! The event decoder on arbitrary input: it never panics, an accepted
//! event encodes for the rules, and no card number passes through — not in
//! an accepted event's text fields, not in a dead letter's reason or copy.
//!
//! `just fuzz` runs it (`cargo fuzz run decode`); CI runs it for a minute.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::config::CleanConfig;
use vigil::decode::{Decoder, Tokenizer, pan, redact};

/// The card numbers a text shows as written: runs of 12 to 19 digits,
/// maybe grouped by single spaces or dashes, that pass the Luhn check and
/// are not glued to letters.
fn card_numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for start in 0..b.len() {
        if !b[start].is_ascii_digit() || (start > 0 && b[start - 1].is_ascii_alphanumeric()) {
            continue;
        }
        let mut digits = String::new();
        let mut i = start;
        while i < b.len() && digits.len() < 19 {
            if b[i].is_ascii_digit() {
                digits.push(char::from(b[i]));
                i += 1;
                let glued = b.get(i).is_some_and(|c| c.is_ascii_alphanumeric());
                if digits.len() >= 12 && !glued && pan::could_be_a_card_number(&digits) {
                    found.push(digits.clone());
                }
            } else if (b[i] == b' ' || b[i] == b'-') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
            } else {
                break;
            }
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    // The card numbers that came in: as written, and as JSON reads them
    // (`\u0034` is a 4). Tokens vigil makes may hold digit runs of their
    // own; only these must not come out.
    let mut came_in = card_numbers(line);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        came_in.extend(card_numbers(&v.to_string()));
    }
    let leaked = |out: &str| card_numbers(out).into_iter().filter(|c| came_in.contains(c)).collect::<Vec<_>>();
    let mut decoder = Decoder::new(&CleanConfig::default(), Tokenizer::new(b"fuzz-key-0123456789"));
    match decoder.decode(line) {
        Ok(p) => {
            let mut encoded = Vec::new();
            p.encode(&mut encoded).expect("an accepted event encodes for the rules");
            let mut fields = vec![p.id.as_str(), p.account.as_str()];
            fields.extend(p.device.as_deref());
            fields.extend(p.merchant.as_ref().map(|m| m.id.as_str()));
            fields.extend(p.counterparty.as_ref().map(|m| m.id.as_str()));
            for field in fields {
                let found = leaked(field);
                assert!(found.is_empty(), "{found:?} in an accepted field {field:?} of {line:?}");
            }
        }
        Err(e) => {
            for out in [e.redacted(), redact(line)] {
                let found = leaked(&out);
                assert!(found.is_empty(), "{found:?} in {out:?} from {line:?}");
            }
        }
    }
});

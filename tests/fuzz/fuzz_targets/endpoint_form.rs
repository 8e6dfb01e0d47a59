//! Fuzz target: the PUT body parsing of `simplepush::app_server::endpoint` (`parse_form`, then
//! `parse_version`) never panics, and accepts exactly the versions docs/protocol.md allows:
//! missing or empty means "now"; otherwise a non-negative integer that fits i64, else 400.

#![no_main]

use libfuzzer_sys::fuzz_target;
use simplepush::app_server::endpoint::{parse_form, parse_version};

const NOW: u64 = 1_700_000_000;

/// The rule, written independently of the server's code.
fn allowed(version: Option<&str>) -> Option<u64> {
    let text = match version.map(str::trim) {
        None | Some("") => return Some(NOW),
        Some(text) => text,
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    u64::try_from(value)
        .ok()
        .filter(|v| i64::try_from(*v).is_ok())
}

fn check(version: Option<&str>) {
    match parse_version(version, NOW) {
        Ok(v) => assert_eq!(Some(v), allowed(version), "version {version:?}"),
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "version {version:?}");
            assert_eq!(allowed(version), None, "version {version:?} refused");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let params = parse_form(data);
    check(params.version.as_deref());
    // What was parsed survives encoding and parsing again unchanged.
    let mut form = form_urlencoded::Serializer::new(String::new());
    if let Some(version) = &params.version {
        form.append_pair("version", version);
    }
    if let Some(data) = &params.data {
        form.append_pair("data", data);
    }
    assert_eq!(parse_form(form.finish().as_bytes()), params);
    // The whole input as the value of `version` (what a query string can carry).
    check(Some(&String::from_utf8_lossy(data)));
});

//! Fuzz target: `simplepush::app_server::token::TokenCodec::decode` (fixed key) never panics on any
//! string; a token it minted opens to the same ids, and no single-bit flip of it opens.
//!
//! The first input byte picks the mode: even, decode the rest as a token; odd, build ids
//! from the rest, mint a token, and check the round trip and one flipped bit.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use simplepush::app_server::token::TokenCodec;
use simplepush_store::{ChannelId, Uaid};

/// The bytes 0..32, base64url: a fixed key, so every run decodes alike.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn codec() -> &'static TokenCodec {
    static CODEC: OnceLock<TokenCodec> = OnceLock::new();
    CODEC.get_or_init(|| TokenCodec::new(&[KEY]).unwrap_or_else(|e| panic!("fixed key: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UUID-shaped channel id (dashed, upper case when `upper`) from 16 bytes.
fn dashed(bytes: &[u8], upper: bool) -> String {
    let h = hex(bytes);
    let id = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    if upper { id.to_ascii_uppercase() } else { id }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let codec = codec();
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        if let Some((uaid, channel)) = codec.decode(&text) {
            // Only a token minted under KEY opens: re-minting its ids must round-trip.
            let again = codec.encode(&uaid, &channel);
            assert_eq!(codec.decode(&again), Some((uaid, channel)));
        }
        return;
    }
    if rest.len() < 34 {
        return;
    }
    let uaid = Uaid::new(hex(&rest[..16]));
    let channel = ChannelId::new(dashed(&rest[16..32], mode & 2 != 0));
    let token = codec.encode(&uaid, &channel);
    assert_eq!(
        codec.decode(&token),
        Some((uaid, channel)),
        "round trip of {token}"
    );

    // Change one base64url character to another: the token must no longer open. The last
    // character carries spare bits, so only characters before it are changed.
    let mut chars = token.into_bytes();
    let at = usize::from(rest[32]) % (chars.len() - 1);
    let old = BASE64URL
        .iter()
        .position(|&c| c == chars[at])
        .unwrap_or_else(|| panic!("token character {:?} is not base64url", chars[at]));
    let delta = 1 + usize::from(rest[33]) % 63;
    chars[at] = BASE64URL[(old + delta) % 64];
    let tampered = String::from_utf8(chars).unwrap_or_else(|e| panic!("ascii: {e}"));
    assert_eq!(
        codec.decode(&tampered),
        None,
        "tampered token {tampered} opened"
    );
});

//! Fuzz target: what an app server's WebPush request carries (RFC 8030, docs/protocol.md):
//! the `TTL`, `Topic`, `Urgency` and `Content-Encoding` / `Encryption` / `Crypto-Key`
//! rules of `simplepush::app_server::webpush`, and the endpoint and message tokens
//! (`TokenCodec::decode_webpush`, `decode_message`, fixed key). Nothing panics, and
//! each verdict agrees with the rule, written here independently.
//!
//! The first input byte picks the mode:
//! - 0 mod 3, headers: the second byte says which headers are present (bit i for line
//!   i); the rest is `\n`-separated TTL, Topic, Urgency, Content-Encoding, Encryption,
//!   Crypto-Key, then the body to the end.
//! - 1 mod 3, a token as text: decoded as every kind; one that opens re-mints alike.
//! - 2 mod 3, ids: uaid, channel and message id (`\n`-separated, each at most 128
//!   bytes) are minted into each kind of token, which opens as that kind only.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use simplepush::app_server::token::{TokenCodec, WebPushVersion, key_digest};
use simplepush::app_server::webpush::{parse_topic, parse_ttl, parse_urgency, payload};
use simplepush_store::{ChannelId, MessageId, Uaid, Urgency};

/// The bytes 0..32, base64url: a fixed key, so every run decodes alike.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// The longest id the server puts in a token.
const MAX_ID: usize = 128;

fn codec() -> &'static TokenCodec {
    static CODEC: OnceLock<TokenCodec> = OnceLock::new();
    CODEC.get_or_init(|| TokenCodec::new(&[KEY]).unwrap_or_else(|e| panic!("fixed key: {e}")))
}

fn headers(data: &[u8]) {
    let Some((&present, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.splitn(7, |&b| b == b'\n');
    let mut fields: Vec<Option<String>> = Vec::new();
    for i in 0..6 {
        let line = lines
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned());
        fields.push(line.filter(|_| present & (1 << i) != 0));
    }
    let body = lines.next().unwrap_or_default().to_vec();
    let [ttl, topic, urgency, encoding, encryption, crypto_key] = &fields[..] else {
        return;
    };

    let ttl_text = ttl.as_deref().map(str::trim);
    match parse_ttl(ttl.as_deref()) {
        Ok(seconds) => {
            let digits = ttl_text.unwrap_or_else(|| panic!("TTL {seconds} without the header"));
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(
                seconds,
                digits.parse::<u64>().unwrap_or(u64::MAX),
                "{digits:?}"
            );
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "TTL {ttl:?}");
            assert!(
                ttl_text.is_none_or(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit())),
                "TTL {ttl:?} refused"
            );
        }
    }

    let topic_ok = |t: &str| {
        (1..=32).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match parse_topic(topic.as_deref()) {
        Ok(None) => assert!(topic.is_none(), "Topic {topic:?} dropped"),
        Ok(Some(kept)) => {
            assert!(topic_ok(&kept), "Topic {kept:?} kept");
            assert_eq!(Some(kept.as_str()), topic.as_deref().map(str::trim));
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert!(
                !topic_ok(topic.as_deref().unwrap_or("-").trim()),
                "Topic {topic:?} refused"
            );
        }
    }

    let named = [
        ("very-low", Urgency::VeryLow),
        ("low", Urgency::Low),
        ("normal", Urgency::Normal),
        ("high", Urgency::High),
    ];
    let expected = match urgency.as_deref().map(str::trim) {
        None => Some(Urgency::Normal),
        Some(text) => named
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, u)| *u),
    };
    match parse_urgency(urgency.as_deref()) {
        Ok(u) => assert_eq!(Some(u), expected, "Urgency {urgency:?}"),
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(expected, None, "Urgency {urgency:?} refused");
        }
    }

    let verdict = payload(
        body.clone(),
        encoding.as_deref(),
        encryption.as_deref(),
        crypto_key.as_deref(),
    );
    let coding = encoding.as_deref().map(|e| e.trim().to_ascii_lowercase());
    let usable = |h: &Option<String>| {
        h.as_deref()
            .map(str::trim)
            .is_some_and(|v| !v.is_empty() && v.len() <= 1024)
    };
    match verdict {
        Ok(None) => assert!(body.is_empty(), "a body of {} bytes dropped", body.len()),
        Ok(Some(p)) => {
            assert_eq!(p.body, body);
            assert_eq!(Some(p.encoding.as_str()), coding.as_deref());
            match p.encoding.as_str() {
                "aes128gcm" => assert!(p.encryption.is_none() && p.crypto_key.is_none()),
                "aesgcm" => {
                    assert!(usable(encryption) && usable(crypto_key), "{p:?}");
                    assert_eq!(
                        p.encryption.as_deref(),
                        encryption.as_deref().map(str::trim)
                    );
                    assert_eq!(
                        p.crypto_key.as_deref(),
                        crypto_key.as_deref().map(str::trim)
                    );
                }
                other => panic!("encoding {other:?} accepted"),
            }
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert!(!body.is_empty());
            let fine = match coding.as_deref() {
                Some("aes128gcm") => true,
                Some("aesgcm") => usable(encryption) && usable(crypto_key),
                _ => false,
            };
            assert!(
                !fine,
                "refused {encoding:?} {encryption:?} {crypto_key:?}: {}",
                e.reason
            );
        }
    }
}

fn decode_text(data: &[u8]) {
    let codec = codec();
    let token = String::from_utf8_lossy(data);
    for version in [WebPushVersion::V1, WebPushVersion::V2] {
        if let Some(target) = codec.decode_webpush(version, &token) {
            assert_eq!(target.key_digest.is_some(), version == WebPushVersion::V2);
            let again = match target.key_digest {
                None => codec.encode_webpush(&target.uaid, &target.channel, None),
                // The digest cannot be re-minted without the key: check the ids only.
                Some(_) => continue,
            };
            assert_eq!(codec.decode_webpush(version, &again), Some(target));
        }
    }
    if let Some((uaid, channel, id)) = codec.decode_message(&token) {
        let again = codec.encode_message(&uaid, &channel, &id);
        assert_eq!(codec.decode_message(&again), Some((uaid, channel, id)));
    }
}

/// At most `MAX_ID` bytes of `bytes` as text, cut at a character boundary.
fn id_text(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    let mut end = text.len().min(MAX_ID);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

fn round_trip(data: &[u8]) {
    let codec = codec();
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let uaid = Uaid::new(id_text(parts.next().unwrap_or_default()));
    let channel = ChannelId::new(id_text(parts.next().unwrap_or_default()));
    let id = MessageId::from(id_text(parts.next().unwrap_or_default()).as_str());
    let key = [4u8; 65];

    let v1 = codec.encode_webpush(&uaid, &channel, None);
    let v2 = codec.encode_webpush(&uaid, &channel, Some(&key));
    let message = codec.encode_message(&uaid, &channel, &id);
    let target = codec
        .decode_webpush(WebPushVersion::V1, &v1)
        .unwrap_or_else(|| panic!("v1 token of {uaid:?} {channel:?} does not open"));
    assert_eq!(
        (&target.uaid, &target.channel, target.key_digest),
        (&uaid, &channel, None)
    );
    let target = codec
        .decode_webpush(WebPushVersion::V2, &v2)
        .unwrap_or_else(|| panic!("v2 token of {uaid:?} {channel:?} does not open"));
    assert_eq!(
        (&target.uaid, &target.channel, target.key_digest),
        (&uaid, &channel, Some(key_digest(&key)))
    );
    assert_eq!(
        codec.decode_message(&message),
        Some((uaid.clone(), channel.clone(), id))
    );
    // Each kind opens as that kind only.
    for token in [&v1, &v2, &message] {
        let opens = [
            codec.decode_webpush(WebPushVersion::V1, token).is_some(),
            codec.decode_webpush(WebPushVersion::V2, token).is_some(),
            codec.decode_message(token).is_some(),
            codec.decode(token).is_some(),
        ];
        assert_eq!(
            opens.iter().filter(|&&o| o).count(),
            1,
            "{token} opens as {opens:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => headers(rest),
        1 => decode_text(rest),
        _ => round_trip(rest),
    }
});

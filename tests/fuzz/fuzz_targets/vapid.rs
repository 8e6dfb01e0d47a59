//! Fuzz target: `simplepush::app_server::vapid` (the `Authorization: vapid t=..,k=..` and
//! `WebPush <jwt>` + `Crypto-Key: p256ecdsa=` forms, then the ES256 JWT checks, with a
//! fixed origin and clock) never panics, and accepts only what RFC 8292 allows.
//!
//! The first input byte picks the mode:
//! - even: the rest is the `Authorization` header, then after the first `\n` the
//!   `Crypto-Key` header, as sent. A token that verifies must carry a good signature
//!   of [`PKCS8`]'s key (the only key whose tokens the seeds hold) and good claims.
//! - odd: the rest is a JWT header and claims (JSON, split at the first `\n`), signed
//!   here with the fixed key, in the form the second byte picks: the verdict must
//!   follow the claims, and the same token with one signature bit flipped never passes.

#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Map, Value};
use simplepush::app_server::vapid::{self, Failure};

/// A fixed P-256 key (PKCS#8, base64url): the seeds' tokens are signed with it.
const PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgThldY8ZtOrRoJUbPLORackI70egrJrRoZ2gXyTxovQmhRANCAARHBJOpju2t6Vpxho8m49ppc5woHJA69zPbaxuGeugCsdyuJ5dVk77CfZ5bj2NkbCun2CaycFQSYCmHZ5Oba9aa";
/// The server's origin (what `aud` must be).
const ORIGIN: &str = "https://push.example.net";
/// The fixed clock.
const NOW: u64 = 1_800_000_000;
/// How far `exp` may be: 24 hours and a minute of clock skew (RFC 8292 §2).
const LATEST_EXP: u64 = NOW + 24 * 3600 + 60;

fn pair() -> &'static EcdsaKeyPair {
    static PAIR: OnceLock<EcdsaKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let der = URL_SAFE_NO_PAD
            .decode(PKCS8)
            .unwrap_or_else(|e| panic!("fixed key: {e}"));
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .unwrap_or_else(|e| panic!("fixed key: {e}"))
    })
}

fn object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The claims a verified token must have, written independently of the server's code.
fn claims_allowed(claims: &Map<String, Value>) -> bool {
    let aud = claims.get("aud").and_then(Value::as_str);
    let aud_ok = aud.is_some_and(|a| a.trim_end_matches('/') == ORIGIN);
    let exp_ok = claims
        .get("exp")
        .and_then(Value::as_f64)
        .is_some_and(|e| e.floor() > NOW as f64 && e.floor() <= LATEST_EXP as f64);
    let sub_ok = match claims.get("sub") {
        None => true,
        Some(sub) => sub.as_str().is_some_and(|s| {
            let s = s.to_ascii_lowercase();
            (s.starts_with("mailto:") && !s[7..].trim().is_empty())
                || (s.starts_with("https:") && !s[6..].trim().is_empty())
        }),
    };
    aud_ok && exp_ok && sub_ok
}

/// Checks what an accepted token is: three parts, ES256, a good signature by the fixed
/// key over the first two, good claims.
fn assert_genuine(jwt: &str, key: &[u8]) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted {jwt:?}");
    assert_eq!(key, pair().public_key().as_ref(), "accepted another key");
    let header = object(parts[0]).unwrap_or_else(|| panic!("accepted header of {jwt:?}"));
    assert_eq!(header.get("alg"), Some(&Value::from("ES256")), "{jwt:?}");
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2].trim_end_matches('='))
        .unwrap_or_else(|e| panic!("accepted signature of {jwt:?}: {e}"));
    let signed = format!("{}.{}", parts[0], parts[1]);
    assert!(
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
            .verify(signed.as_bytes(), &signature)
            .is_ok(),
        "accepted a bad signature: {jwt:?}"
    );
    let claims = object(parts[1]).unwrap_or_else(|| panic!("accepted claims of {jwt:?}"));
    assert!(claims_allowed(&claims), "accepted claims {claims:?}");
}

/// Parses the headers and verifies; checks the invariants of the header forms.
fn check(authorization: &str, crypto_key: Option<&str>) -> Option<Result<(), Failure>> {
    let credentials = match vapid::credentials(Some(authorization), crypto_key) {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            assert!(
                authorization.trim().is_empty(),
                "{authorization:?} read as none"
            );
            return None;
        }
        Err(failure) => {
            assert!(!failure.reason().is_empty() && !failure.label().is_empty());
            assert!(
                matches!(failure, Failure::Header | Failure::Key),
                "{failure:?} before the token was read"
            );
            return None;
        }
    };
    let key = credentials.key();
    assert!(key.len() == 65 && key[0] == 4, "key {key:?}");
    let verdict = credentials.verify(ORIGIN, NOW);
    if verdict.is_ok() {
        let jwt = jwt_of(authorization);
        assert_genuine(jwt, key);
    }
    Some(verdict)
}

/// The JWT as it sits in either header form (only called on accepted credentials).
fn jwt_of(authorization: &str) -> &str {
    let (scheme, rest) = authorization
        .trim()
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or_else(|| panic!("accepted {authorization:?}"));
    if !scheme.eq_ignore_ascii_case("vapid") {
        return rest.trim();
    }
    rest.split(',')
        .filter_map(|p| p.split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("t"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .next_back()
        .unwrap_or_else(|| panic!("no t= in {authorization:?}"))
}

fn signed_token(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = pair()
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap_or_else(|e| panic!("signing: {e}"));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let (authorization, crypto_key) = match text.split_once('\n') {
            Some((a, c)) => (a, Some(c)),
            None => (&*text, None),
        };
        check(authorization, crypto_key);
        return;
    }
    let Some((&form, rest)) = rest.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let token = signed_token(header, claims);
    let key = URL_SAFE_NO_PAD.encode(pair().public_key().as_ref());
    let headers = |token: &str| match form % 3 {
        0 => (format!("vapid t={token}, k={key}"), None),
        1 => (format!("vapid k=\"{key}\",t=\"{token}\""), None),
        _ => (
            format!("WebPush {token}"),
            Some(format!("dh=BAAA;p256ecdsa={key}")),
        ),
    };
    let (authorization, crypto_key) = headers(&token);
    let verdict = check(&authorization, crypto_key.as_deref())
        .unwrap_or_else(|| panic!("headers of {token} refused"));
    // A signed token is refused exactly when its header or claims say so.
    let header_ok = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| {
            h.as_object()
                .map(|h| h.get("alg") == Some(&Value::from("ES256")))
        })
        .unwrap_or(false);
    let claims_ok = serde_json::from_slice::<Value>(claims)
        .ok()
        .and_then(|c| c.as_object().map(claims_allowed))
        .unwrap_or(false);
    if verdict.is_err() {
        assert!(!(header_ok && claims_ok), "{verdict:?}: {token}");
    }
    // One flipped bit in the signature (which one follows the input): never accepted.
    let mut tampered = URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("own signature: {e}"));
    let bit = (usize::from(form) + 256 * rest.len()) % (tampered.len() * 8);
    tampered[bit / 8] ^= 1 << (bit % 8);
    let signed_len = token.rfind('.').unwrap_or_default();
    let forged = format!(
        "{}.{}",
        &token[..signed_len],
        URL_SAFE_NO_PAD.encode(&tampered)
    );
    let (authorization, crypto_key) = headers(&forged);
    let verdict = check(&authorization, crypto_key.as_deref());
    assert!(
        matches!(verdict, Some(Err(_))),
        "forged signature: {verdict:?}: {forged}"
    );
});

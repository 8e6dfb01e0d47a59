//! VAPID (RFC 8292): how an app server proves which key it pushes with. Two header
//! forms are read: `Authorization: vapid t=<JWT>, k=<key>` and the older
//! `Authorization: WebPush <JWT>` with `Crypto-Key: p256ecdsa=<key>`. The JWT must be
//! ES256, signed with that key (checked with `ring`), for our origin, expiring within
//! 24 hours.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

/// The longest a JWT may be valid for from now (RFC 8292 §2).
const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// Length of an uncompressed P-256 point.
const KEY_LEN: usize = 65;

/// Why VAPID credentials were refused; each has a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No VAPID where it is required (a `/wpush/v2/` endpoint).
    Missing,
    /// An `Authorization` header of another scheme, or without its parameters.
    Header,
    /// The public key is not a base64url uncompressed P-256 point.
    Key,
    /// The JWT is not three base64url parts of JSON objects.
    Token,
    /// The JWT's `alg` is not ES256.
    Algorithm,
    /// The signature does not verify with the key.
    Signature,
    /// `aud` is missing or not this server's origin.
    Audience,
    /// `exp` is missing or not in the future.
    Expired,
    /// `exp` is more than 24 hours away.
    TooLong,
    /// `sub` is neither a `mailto:` nor an `https:` URL.
    Subject,
    /// A valid signature, but with another key than the subscription's (403).
    KeyMismatch,
}

impl Failure {
    /// The `reason` label of `vapid_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Header => "header",
            Failure::Key => "key",
            Failure::Token => "token",
            Failure::Algorithm => "alg",
            Failure::Signature => "signature",
            Failure::Audience => "aud",
            Failure::Expired => "expired",
            Failure::TooLong => "exp_too_far",
            Failure::Subject => "sub",
            Failure::KeyMismatch => "key_mismatch",
        }
    }

    /// What the app server is told.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "this endpoint needs VAPID (Authorization: vapid t=..., k=...)",
            Failure::Header => {
                "Authorization must be `vapid t=<JWT>, k=<key>` or `WebPush <JWT>` with Crypto-Key p256ecdsa"
            }
            Failure::Key => "VAPID key is not a base64url uncompressed P-256 public key",
            Failure::Token => "VAPID token is not a JWT",
            Failure::Algorithm => "VAPID token must be signed with ES256",
            Failure::Signature => "VAPID signature does not verify with the key",
            Failure::Audience => "VAPID aud must be the origin of the push endpoint",
            Failure::Expired => "VAPID token has expired (exp)",
            Failure::TooLong => "VAPID exp must be at most 24 hours away",
            Failure::Subject => "VAPID sub must be a mailto: or https: URL",
            Failure::KeyMismatch => "VAPID key is not the one this subscription was made with",
        }
    }
}

/// VAPID credentials as sent: a JWT and the public key it claims to be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    jwt: String,
    key: Vec<u8>,
}

impl Credentials {
    /// The public key, the raw 65-byte point.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Checks the JWT: ES256, signed by the key, `aud` = `origin`, `exp` after `now` and
    /// at most 24 hours away, `sub` (if any) a `mailto:` or `https:` URL.
    pub fn verify(&self, origin: &str, now: u64) -> Result<(), Failure> {
        let mut parts = self.jwt.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Token);
        };
        let header = json_part(header)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(Failure::Algorithm);
        }
        let signature = decode_base64url(signature).ok_or(Failure::Token)?;
        let signed_len = self.jwt.len() - signature_part_len(&self.jwt);
        let signed = &self.jwt.as_bytes()[..signed_len];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.key)
            .verify(signed, &signature)
            .map_err(|_| Failure::Signature)?;
        let claims = json_part(claims)?;
        let audience = claims.get("aud").and_then(|a| a.as_str());
        if audience.map(|a| a.trim_end_matches('/')) != Some(origin.trim_end_matches('/')) {
            return Err(Failure::Audience);
        }
        let exp = claims.get("exp").and_then(|e| {
            e.as_u64().or_else(|| {
                e.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        });
        match exp {
            Some(exp) if exp > now => {
                if exp > now.saturating_add(MAX_LIFETIME_SECS) {
                    return Err(Failure::TooLong);
                }
            }
            _ => return Err(Failure::Expired),
        }
        match claims.get("sub") {
            None => Ok(()),
            Some(sub) => {
                let sub = sub.as_str().unwrap_or_default().to_ascii_lowercase();
                let url = ["mailto:", "https:"]
                    .iter()
                    .find_map(|scheme| sub.strip_prefix(scheme));
                if url.is_some_and(|rest| !rest.trim().is_empty()) {
                    Ok(())
                } else {
                    Err(Failure::Subject)
                }
            }
        }
    }
}

/// Length of the JWT's last part with its dot (what the signature does not cover).
fn signature_part_len(jwt: &str) -> usize {
    jwt.rfind('.').map_or(0, |dot| jwt.len() - dot)
}

/// A JWT part: base64url of a JSON object.
fn json_part(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    let bytes = decode_base64url(part).ok_or(Failure::Token)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Failure::Token),
    }
}

/// Base64url, with or without padding.
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// A VAPID public key: base64url (or, as some old libraries sent it, standard base64),
/// padded or not, of an uncompressed P-256 point.
pub fn parse_key(text: &str) -> Result<Vec<u8>, Failure> {
    let text = text.trim().trim_matches('"').trim_end_matches('=');
    let key = URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .map_err(|_| Failure::Key)?;
    if key.len() != KEY_LEN || key[0] != 4 {
        return Err(Failure::Key);
    }
    Ok(key)
}

/// The VAPID credentials of a request, from its `Authorization` and `Crypto-Key`
/// headers: `Ok(None)` when there is no `Authorization` at all.
pub fn credentials(
    authorization: Option<&str>,
    crypto_key: Option<&str>,
) -> Result<Option<Credentials>, Failure> {
    let Some(authorization) = authorization.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let (scheme, rest) = authorization
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(Failure::Header)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("vapid") {
        let (mut token, mut key) = (None, None);
        for param in rest.split(',') {
            let Some((name, value)) = param.split_once('=') else {
                return Err(Failure::Header);
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "t" => token = Some(value),
                "k" => key = Some(value),
                _ => {}
            }
        }
        let (Some(token), Some(key)) = (token, key) else {
            return Err(Failure::Header);
        };
        let key = parse_key(key)?;
        Ok(Some(Credentials {
            jwt: token.to_owned(),
            key,
        }))
    } else if scheme.eq_ignore_ascii_case("webpush") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(Failure::Header);
        }
        let key = crypto_key
            .into_iter()
            .flat_map(|header| header.split([';', ',']))
            .find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("p256ecdsa")
                    .then_some(value)
            })
            .ok_or(Failure::Key)?;
        Ok(Some(Credentials {
            jwt: rest.to_owned(),
            key: parse_key(key)?,
        }))
    } else {
        Err(Failure::Header)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    const ORIGIN: &str = "https://push.example.net";
    const NOW: u64 = 1_800_000_000;

    /// A fresh P-256 key pair.
    pub(crate) fn key_pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    /// A JWT with this header and these claims, signed by `pair`.
    pub(crate) fn jwt(
        pair: &EcdsaKeyPair,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn es256() -> serde_json::Value {
        serde_json::json!({"typ": "JWT", "alg": "ES256"})
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"aud": ORIGIN, "exp": NOW + 12 * 3600, "sub": "mailto:ops@example.com"})
    }

    fn key_text(pair: &EcdsaKeyPair) -> String {
        URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
    }

    fn check(pair: &EcdsaKeyPair, token: &str) -> Result<(), Failure> {
        let header = format!("vapid t={token}, k={}", key_text(pair));
        credentials(Some(&header), None)?
            .ok_or(Failure::Missing)?
            .verify(ORIGIN, NOW)
    }

    #[test]
    fn a_good_token_verifies_in_both_header_forms() {
        let pair = key_pair();
        let token = jwt(&pair, es256(), good_claims());
        assert_eq!(check(&pair, &token), Ok(()));
        let legacy = credentials(
            Some(&format!("WebPush {token}")),
            Some(&format!(
                "dh=BNoRDbb84JGm8g5Z5CFxurSqsXWJ11ItfXEWYVLE85Y7CYkDjXsIEc4aqxYaQ1G8BqkXCJ6DPpDrWtdWj_mugHU; p256ecdsa={}",
                key_text(&pair)
            )),
        )
        .unwrap()
        .unwrap();
        assert_eq!(legacy.key(), pair.public_key().as_ref());
        assert_eq!(legacy.verify(ORIGIN, NOW), Ok(()));
        // Comma-separated Crypto-Key, padded key, scheme in any case, no `sub`.
        let claims = serde_json::json!({"aud": ORIGIN, "exp": NOW + 60});
        let token = jwt(&pair, es256(), claims);
        let padded = format!("{}=", key_text(&pair));
        let legacy = credentials(
            Some(&format!("webpush {token}")),
            Some(&format!("keyid=p256dh, p256ecdsa={padded}")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(legacy.verify(&format!("{ORIGIN}/"), NOW), Ok(()));
        let header = format!("VAPID k=\"{padded}\",t={token}");
        assert_eq!(
            credentials(Some(&header), None)
                .unwrap()
                .unwrap()
                .verify(ORIGIN, NOW),
            Ok(())
        );
    }

    #[test]
    fn no_authorization_is_none_and_bad_headers_are_refused() {
        assert_eq!(credentials(None, None), Ok(None));
        assert_eq!(credentials(Some("  "), Some("p256ecdsa=x")), Ok(None));
        let pair = key_pair();
        let key = key_text(&pair);
        let token = jwt(&pair, es256(), good_claims());
        for (authorization, crypto_key, failure) in [
            (format!("Bearer {token}"), None, Failure::Header),
            ("vapid".to_owned(), None, Failure::Header),
            (format!("vapid t={token}"), None, Failure::Header),
            (format!("vapid k={key}"), None, Failure::Header),
            (format!("vapid t={token} k={key}"), None, Failure::Header),
            (format!("vapid t={token}, k=abc"), None, Failure::Key),
            (format!("vapid t={token}, k=!!!"), None, Failure::Key),
            (format!("WebPush {token}"), None, Failure::Key),
            (format!("WebPush {token}"), Some("dh=abc"), Failure::Key),
            (
                format!("WebPush {token}"),
                Some("p256ecdsa=AAAA"),
                Failure::Key,
            ),
            ("WebPush a b".to_owned(), None, Failure::Header),
        ] {
            assert_eq!(
                credentials(Some(&authorization), crypto_key),
                Err(failure),
                "{authorization} / {crypto_key:?}"
            );
        }
    }

    #[test]
    fn keys_must_be_uncompressed_points() {
        let pair = key_pair();
        let raw = pair.public_key().as_ref().to_vec();
        assert_eq!(parse_key(&URL_SAFE_NO_PAD.encode(&raw)), Ok(raw.clone()));
        assert_eq!(
            parse_key(&base64::engine::general_purpose::STANDARD.encode(&raw)),
            Ok(raw.clone())
        );
        let mut compressed = raw[..33].to_vec();
        compressed[0] = 2;
        assert_eq!(
            parse_key(&URL_SAFE_NO_PAD.encode(&compressed)),
            Err(Failure::Key)
        );
        let mut wrong_tag = raw.clone();
        wrong_tag[0] = 5;
        assert_eq!(
            parse_key(&URL_SAFE_NO_PAD.encode(&wrong_tag)),
            Err(Failure::Key)
        );
    }

    #[test]
    fn jwt_checks() {
        let pair = key_pair();
        let claims = |value: serde_json::Value| jwt(&pair, es256(), value);
        let cases = [
            (
                claims(serde_json::json!({"aud": ORIGIN, "exp": NOW - 1})),
                Failure::Expired,
            ),
            (
                claims(serde_json::json!({"aud": ORIGIN, "exp": NOW})),
                Failure::Expired,
            ),
            (claims(serde_json::json!({"aud": ORIGIN})), Failure::Expired),
            (
                claims(serde_json::json!({"aud": ORIGIN, "exp": "soon"})),
                Failure::Expired,
            ),
            (
                claims(serde_json::json!({"aud": ORIGIN, "exp": NOW + 25 * 3600})),
                Failure::TooLong,
            ),
            (
                claims(serde_json::json!({"aud": "https://other.example", "exp": NOW + 60})),
                Failure::Audience,
            ),
            (
                claims(serde_json::json!({"aud": "http://push.example.net", "exp": NOW + 60})),
                Failure::Audience,
            ),
            (
                claims(serde_json::json!({"exp": NOW + 60})),
                Failure::Audience,
            ),
            (
                claims(
                    serde_json::json!({"aud": ORIGIN, "exp": NOW + 60, "sub": "ops@example.com"}),
                ),
                Failure::Subject,
            ),
            (
                claims(
                    serde_json::json!({"aud": ORIGIN, "exp": NOW + 60, "sub": "http://example.com"}),
                ),
                Failure::Subject,
            ),
            (
                claims(serde_json::json!({"aud": ORIGIN, "exp": NOW + 60, "sub": 7})),
                Failure::Subject,
            ),
            (
                jwt(&pair, serde_json::json!({"alg": "HS256"}), good_claims()),
                Failure::Algorithm,
            ),
            (
                jwt(&pair, serde_json::json!({"alg": "none"}), good_claims()),
                Failure::Algorithm,
            ),
            (
                jwt(&pair, serde_json::json!({}), good_claims()),
                Failure::Algorithm,
            ),
            // Signed by another key than the one sent.
            (jwt(&key_pair(), es256(), good_claims()), Failure::Signature),
            ("garbage".to_owned(), Failure::Token),
            ("a.b.c".to_owned(), Failure::Token),
            ("a.b.c.d".to_owned(), Failure::Token),
            ("..".to_owned(), Failure::Token),
            (
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(es256().to_string()),
                    URL_SAFE_NO_PAD.encode(good_claims().to_string())
                ),
                Failure::Signature,
            ),
            (
                format!(
                    "{}.{}.AAAA",
                    URL_SAFE_NO_PAD.encode("[1]"),
                    URL_SAFE_NO_PAD.encode(good_claims().to_string())
                ),
                Failure::Token,
            ),
        ];
        for (token, failure) in cases {
            assert_eq!(check(&pair, &token), Err(failure), "{token}");
        }
        // A tampered claim breaks the signature.
        let good = claims(good_claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let other = URL_SAFE_NO_PAD
            .encode(serde_json::json!({"aud": ORIGIN, "exp": NOW + 13 * 3600}).to_string());
        parts[1] = &other;
        assert_eq!(check(&pair, &parts.join(".")), Err(Failure::Signature));
        // 24 hours exactly, and an https: subject, are fine.
        let day = claims(
            serde_json::json!({"aud": ORIGIN, "exp": NOW + 24 * 3600, "sub": "https://example.com/contact"}),
        );
        assert_eq!(check(&pair, &day), Ok(()));
        // A second past it is not.
        let past = claims(serde_json::json!({"aud": ORIGIN, "exp": NOW + 24 * 3600 + 1}));
        assert_eq!(check(&pair, &past), Err(Failure::TooLong));
    }
}

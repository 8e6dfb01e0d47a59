//! Router request signatures: each node-to-node request carries an HMAC-SHA256, keyed by
//! the shared `[router] secret`, over its method, path, a timestamp, a nonce and its
//! body. A receiver refuses a wrong MAC, a timestamp more than [`MAX_SKEW_SECS`] away
//! from its own clock, and a MAC it already accepted (a replay).
//!
//! On the wire (README, "Running a cluster"):
//! `Authorization: SimplepushRouter <base64url MAC>`, `X-Simplepush-Timestamp: <unix
//! seconds>`, `X-Simplepush-Nonce: <base64url of 16 random bytes>`; the MAC is over
//! `METHOD\nPATH\nTIMESTAMP\nNONCE\n` followed by the body bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use warp::http::{HeaderMap, Method, header};

/// The timestamp header.
pub const TIMESTAMP: &str = "x-simplepush-timestamp";
/// The nonce header.
pub const NONCE: &str = "x-simplepush-nonce";
/// The `Authorization` scheme.
const SCHEME: &str = "SimplepushRouter ";
/// A request whose timestamp is further than this from the receiver's clock is stale.
pub const MAX_SKEW_SECS: u64 = 30;
/// Longest nonce accepted (ours are 22 characters).
const MAX_NONCE: usize = 64;
/// MACs remembered at most: beyond, new requests are refused until old ones age out
/// (~40 MB at most; 2,500 routed updates/s over a minute need 150,000).
const MAX_REMEMBERED: usize = 1_000_000;

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unsigned, wrongly signed, stale or replayed (401), with what is wrong.
    Invalid(&'static str),
    /// Too many recent requests to remember: replays could not be told apart (503).
    Full,
}

/// A request's signature, read from its headers.
#[derive(Debug)]
pub struct Signed {
    timestamp: u64,
    nonce: String,
    mac: Vec<u8>,
}

/// Signs and checks router requests with the shared secret.
pub struct Signer {
    key: hmac::Key,
    random: SystemRandom,
    /// MACs accepted within the window, with their timestamps.
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

#[derive(Default)]
struct Seen {
    macs: HashMap<Vec<u8>, u64>,
    /// Size at which aged entries are swept next.
    sweep_at: usize,
}

impl Signer {
    /// A signer keyed by `secret`.
    pub fn new(secret: &str) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            random: SystemRandom::new(),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn message(method: &Method, path: &str, timestamp: u64, nonce: &str, body: &[u8]) -> Vec<u8> {
        let mut message = format!("{method}\n{path}\n{timestamp}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message
    }

    /// The headers (name, value) that sign a request made at `now` (unix seconds).
    pub fn sign(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> [(&'static str, String); 3] {
        let mut nonce = [0u8; 16];
        // The system's random source does not fail on a working host; a zero nonce
        // still signs correctly (the timestamp and body vary).
        let _ = self.random.fill(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let tag = hmac::sign(&self.key, &Self::message(method, path, now, &nonce, body));
        [
            (
                header::AUTHORIZATION.as_str(),
                format!("{SCHEME}{}", URL_SAFE_NO_PAD.encode(tag.as_ref())),
            ),
            (TIMESTAMP, now.to_string()),
            (NONCE, nonce),
        ]
    }

    /// Reads a request's signature headers and checks its timestamp against `now`,
    /// before its body is read. The error says what is wrong, for the 401.
    pub fn read(headers: &HeaderMap, now: u64) -> Result<Signed, &'static str> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mac = text(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix(SCHEME))
            .and_then(|mac| URL_SAFE_NO_PAD.decode(mac.trim()).ok())
            .ok_or("missing or malformed router signature")?;
        let timestamp: u64 = text(TIMESTAMP)
            .and_then(|t| t.parse().ok())
            .ok_or("missing or malformed router timestamp")?;
        let nonce = text(NONCE)
            .filter(|n| !n.is_empty() && n.len() <= MAX_NONCE)
            .ok_or("missing or malformed router nonce")?;
        if timestamp.abs_diff(now) > MAX_SKEW_SECS {
            return Err("stale router request (check the nodes' clocks)");
        }
        Ok(Signed {
            timestamp,
            nonce: nonce.to_owned(),
            mac,
        })
    }

    /// Whether `signed` is this secret's MAC over the request (compared in constant
    /// time) and was not accepted before; if so it is remembered until it is stale.
    pub fn accept(
        &self,
        signed: &Signed,
        method: &Method,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), Refusal> {
        let message = Self::message(method, path, signed.timestamp, &signed.nonce, body);
        hmac::verify(&self.key, &message, &signed.mac)
            .map_err(|_| Refusal::Invalid("wrong router signature"))?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.macs.len() >= seen.sweep_at {
            seen.macs
                .retain(|_, &mut timestamp| timestamp.saturating_add(MAX_SKEW_SECS) >= now);
            seen.sweep_at = (seen.macs.len() * 2).max(4096);
        }
        if seen.macs.contains_key(&signed.mac) {
            return Err(Refusal::Invalid("replayed router request"));
        }
        if seen.macs.len() >= MAX_REMEMBERED {
            return Err(Refusal::Full);
        }
        seen.macs.insert(signed.mac.clone(), signed.timestamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(signature: &[(&'static str, String); 3]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in signature {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let signer = Signer::new("secret");
        let now = 1_700_000_000;
        let map = headers(&signer.sign(&Method::PUT, "/route/u", b"{}", now));
        let signed = Signer::read(&map, now + 5).unwrap();
        assert_eq!(
            signer.accept(&signed, &Method::PUT, "/route/u", b"{}", now + 5),
            Ok(())
        );
        assert_eq!(
            signer.accept(&signed, &Method::PUT, "/route/u", b"{}", now + 6),
            Err(Refusal::Invalid("replayed router request"))
        );
    }

    #[test]
    fn any_change_or_another_secret_breaks_the_mac() {
        let signer = Signer::new("secret");
        let now = 1_700_000_000;
        let map = headers(&signer.sign(&Method::PUT, "/route/u", b"{}", now));
        let signed = Signer::read(&map, now).unwrap();
        for (method, path, body) in [
            (Method::DELETE, "/route/u", &b"{}"[..]),
            (Method::PUT, "/route/v", b"{}"),
            (Method::PUT, "/route/u", b"{ }"),
        ] {
            assert!(signer.accept(&signed, &method, path, body, now).is_err());
        }
        let other = Signer::new("other");
        assert!(
            other
                .accept(&signed, &Method::PUT, "/route/u", b"{}", now)
                .is_err()
        );
    }

    #[test]
    fn stale_and_unsigned_requests_are_refused_before_the_body() {
        let signer = Signer::new("secret");
        let now = 1_700_000_000;
        let map = headers(&signer.sign(&Method::PUT, "/", b"", now));
        assert!(Signer::read(&map, now + MAX_SKEW_SECS).is_ok());
        assert!(Signer::read(&map, now + MAX_SKEW_SECS + 1).is_err());
        assert!(Signer::read(&map, now - MAX_SKEW_SECS - 1).is_err());
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert!(Signer::read(&bearer, now).is_err());
    }

    #[test]
    fn remembered_macs_age_out() {
        let signer = Signer::new("secret");
        let now = 1_700_000_000;
        for _ in 0..4096 {
            let map = headers(&signer.sign(&Method::PUT, "/", b"", now));
            let signed = Signer::read(&map, now).unwrap();
            signer.accept(&signed, &Method::PUT, "/", b"", now).unwrap();
        }
        let later = now + MAX_SKEW_SECS + 1;
        let map = headers(&signer.sign(&Method::PUT, "/", b"", later));
        let signed = Signer::read(&map, later).unwrap();
        signer
            .accept(&signed, &Method::PUT, "/", b"", later)
            .unwrap();
        let seen = signer.seen.lock().unwrap();
        assert_eq!(seen.macs.len(), 1, "only the fresh one is remembered");
    }
}

//! Tokens: the opaque, unforgeable parts of the URLs app servers are given. A token is
//! the XChaCha20-Poly1305 encryption of what it names under a server key, base64url
//! encoded, so an app server can neither read nor forge one. Each kind has its own
//! associated data, so a token of one kind never opens as another:
//! - a SimplePush endpoint (`/update/{token}`): (uaid, channelID);
//! - a WebPush endpoint (`/wpush/v1/{token}`): (uaid, channelID), and for `/wpush/v2/`
//!   also the SHA-256 digest of the subscription's VAPID public key;
//! - a WebPush message (`/m/{token}`, the `Location` of a push): (uaid, channelID,
//!   message id).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use simplepush_store::{ChannelId, MessageId, Uaid};

/// Binds tokens to this purpose, so ciphertexts made for anything else never open.
const AAD: &[u8] = b"simplepush endpoint token v1";
/// The same for WebPush endpoints without a VAPID key (`/wpush/v1/`).
const AAD_WEBPUSH_V1: &[u8] = b"simplepush webpush endpoint v1";
/// The same for WebPush endpoints bound to a VAPID key (`/wpush/v2/`).
const AAD_WEBPUSH_V2: &[u8] = b"simplepush webpush endpoint v2";
/// The same for WebPush message ids given out in `Location`.
const AAD_MESSAGE: &[u8] = b"simplepush webpush message v1";
const NONCE_LEN: usize = 24;
/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// Why the configured keys are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is not base64url.
    #[error("token key #{index} is not base64url")]
    NotBase64 {
        /// Position in the key list, from 1.
        index: usize,
    },
    /// A key decodes to the wrong length.
    #[error(
        "token key #{index} is {len} bytes; keys are {KEY_LEN} bytes (use `simplepush genkey`)"
    )]
    WrongLength {
        /// Position in the key list, from 1.
        index: usize,
        /// Its decoded length.
        len: usize,
    },
    /// No key at all.
    #[error("no token key")]
    Empty,
}

/// Mints tokens with the first key and opens them with any key (for rotation).
pub struct TokenCodec {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCodec")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

/// A fresh random key, base64url encoded (what `simplepush genkey` prints).
pub fn generate_key() -> String {
    URL_SAFE_NO_PAD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

impl TokenCodec {
    /// A codec from base64url keys (padding optional); the first one mints.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<TokenCodec, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let ciphers = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let index = i + 1;
                let text = key.as_ref().trim().trim_end_matches('=');
                let bytes = URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|_| KeyError::NotBase64 { index })?;
                XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength {
                    index,
                    len: bytes.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenCodec { ciphers })
    }

    /// The SimplePush token for a channel. Each call gives a different token; all of
    /// them open.
    pub fn encode(&self, uaid: &Uaid, channel: &ChannelId) -> String {
        // The layout of the first tokens ever minted, kept so they still open: the
        // uaid's length, the uaid, then the channel id to the end.
        let mut plain = Fields::default();
        plain.field(uaid.as_str().as_bytes());
        plain.0.extend_from_slice(channel.as_str().as_bytes());
        self.seal(AAD, &plain.0)
    }

    /// The channel a SimplePush token names, or `None` for anything not minted by one
    /// of our keys as such a token.
    pub fn decode(&self, token: &str) -> Option<(Uaid, ChannelId)> {
        let plain = self.open(AAD, token)?;
        let mut fields = Reader(&plain);
        let uaid = fields.text()?;
        let channel = std::str::from_utf8(fields.0).ok()?;
        Some((Uaid::from(uaid), ChannelId::from(channel)))
    }

    /// The WebPush token for a channel: for `/wpush/v1/` when `key` is `None`, else for
    /// `/wpush/v2/`, bound to the digest of `key` (the VAPID public key as registered,
    /// the raw 65-byte point).
    pub fn encode_webpush(&self, uaid: &Uaid, channel: &ChannelId, key: Option<&[u8]>) -> String {
        let mut plain = Fields::default();
        plain.field(uaid.as_str().as_bytes());
        plain.field(channel.as_str().as_bytes());
        match key {
            None => self.seal(AAD_WEBPUSH_V1, &plain.0),
            Some(key) => {
                plain.field(key_digest(key).as_ref());
                self.seal(AAD_WEBPUSH_V2, &plain.0)
            }
        }
    }

    /// What a WebPush token of `version` names, or `None` for anything not minted by
    /// one of our keys as a token of that version.
    pub fn decode_webpush(&self, version: WebPushVersion, token: &str) -> Option<WebPushTarget> {
        let aad = match version {
            WebPushVersion::V1 => AAD_WEBPUSH_V1,
            WebPushVersion::V2 => AAD_WEBPUSH_V2,
        };
        let plain = self.open(aad, token)?;
        let mut fields = Reader(&plain);
        let uaid = Uaid::from(fields.text()?);
        let channel = ChannelId::from(fields.text()?);
        let key_digest = match version {
            WebPushVersion::V1 => None,
            WebPushVersion::V2 => Some(<[u8; DIGEST_LEN]>::try_from(fields.bytes()?).ok()?),
        };
        fields.0.is_empty().then_some(WebPushTarget {
            uaid,
            channel,
            key_digest,
        })
    }

    /// The token of a queued WebPush message (the last part of its `Location`).
    pub fn encode_message(&self, uaid: &Uaid, channel: &ChannelId, id: &MessageId) -> String {
        let mut plain = Fields::default();
        plain.field(uaid.as_str().as_bytes());
        plain.field(channel.as_str().as_bytes());
        plain.field(id.as_str().as_bytes());
        self.seal(AAD_MESSAGE, &plain.0)
    }

    /// The message a message token names, or `None` for anything not minted by one of
    /// our keys as such a token.
    pub fn decode_message(&self, token: &str) -> Option<(Uaid, ChannelId, MessageId)> {
        let plain = self.open(AAD_MESSAGE, token)?;
        let mut fields = Reader(&plain);
        let uaid = Uaid::from(fields.text()?);
        let channel = ChannelId::from(fields.text()?);
        let id = MessageId::from(fields.text()?);
        fields.0.is_empty().then_some((uaid, channel, id))
    }

    /// Encrypts `plain` for the purpose `aad` under the minting key: nonce then
    /// ciphertext, base64url.
    fn seal(&self, aad: &[u8], plain: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.ciphers[0]
            .encrypt(&nonce, Payload { msg: plain, aad })
            // Encryption fails only for messages beyond 256 GiB.
            .unwrap_or_default();
        let mut token = Vec::with_capacity(NONCE_LEN + sealed.len());
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Decrypts a token sealed for the purpose `aad` by any of the keys.
    fn open(&self, aad: &[u8], token: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        self.ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(nonce, Payload { msg: sealed, aad }).ok())
    }
}

/// Length of a VAPID key digest in a `/wpush/v2/` token.
pub const DIGEST_LEN: usize = 32;

/// The SHA-256 digest of a VAPID public key (the raw point), as bound into `/wpush/v2/`
/// tokens: a push is let through when the digest of the key it is signed with matches.
pub fn key_digest(key: &[u8]) -> [u8; DIGEST_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0; DIGEST_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The two WebPush endpoint forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebPushVersion {
    /// `/wpush/v1/{token}`: any app server may push (VAPID optional).
    V1,
    /// `/wpush/v2/{token}`: only pushes signed with the subscription's VAPID key.
    V2,
}

/// What a WebPush endpoint token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushTarget {
    /// The device.
    pub uaid: Uaid,
    /// Its channel (subscription).
    pub channel: ChannelId,
    /// `/wpush/v2/` only: the digest of the subscription's VAPID public key.
    pub key_digest: Option<[u8; DIGEST_LEN]>,
}

/// A token's plaintext being written: fields each behind a one-byte length (ids are at
/// most 128 bytes, digests 32).
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn field(&mut self, bytes: &[u8]) {
        self.0.push(bytes.len().min(usize::from(u8::MAX)) as u8);
        self.0
            .extend_from_slice(&bytes[..bytes.len().min(usize::from(u8::MAX))]);
    }
}

/// A token's plaintext being read, field by field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.0.split_first()?;
        let len = usize::from(len);
        if rest.len() < len {
            return None;
        }
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        Some(field)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uaid, ChannelId) {
        (
            Uaid::from("9f8d6a2b3c4e4f5a8b7c6d5e4f3a2b1c"),
            ChannelId::from("2A3F1B2C-4D5E-4F60-8A9B-0C1D2E3F4A5B"),
        )
    }

    #[test]
    fn token_round_trips_ids_exactly() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let token = codec.encode(&uaid, &channel);
        assert_eq!(codec.decode(&token), Some((uaid, channel)));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let raw = URL_SAFE_NO_PAD
            .decode(codec.encode(&uaid, &channel))
            .unwrap();
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                codec.decode(&URL_SAFE_NO_PAD.encode(&flipped)),
                None,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn garbage_and_truncated_tokens_are_rejected() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let token = codec.encode(&uaid, &channel);
        for bad in [
            "",
            "a",
            "!!!!",
            &token[..token.len() - 1],
            &token[..10],
            "AAAA",
        ] {
            assert_eq!(codec.decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rotation_opens_tokens_of_older_keys_and_mints_with_the_first() {
        let (old, new) = (generate_key(), generate_key());
        let (uaid, channel) = ids();
        let old_token = TokenCodec::new(&[&old]).unwrap().encode(&uaid, &channel);
        let rotated = TokenCodec::new(&[&new, &old]).unwrap();
        assert_eq!(
            rotated.decode(&old_token),
            Some((uaid.clone(), channel.clone()))
        );
        let new_token = rotated.encode(&uaid, &channel);
        assert_eq!(TokenCodec::new(&[&old]).unwrap().decode(&new_token), None);
        assert!(
            TokenCodec::new(&[&new])
                .unwrap()
                .decode(&new_token)
                .is_some()
        );
    }

    #[test]
    fn foreign_key_tokens_are_rejected() {
        let (uaid, channel) = ids();
        let token = TokenCodec::new(&[generate_key()])
            .unwrap()
            .encode(&uaid, &channel);
        assert_eq!(
            TokenCodec::new(&[generate_key()]).unwrap().decode(&token),
            None
        );
    }

    #[test]
    fn bad_keys_are_refused_with_their_position() {
        assert!(matches!(TokenCodec::new::<&str>(&[]), Err(KeyError::Empty)));
        let err = TokenCodec::new(&[generate_key().as_str(), "c2hvcnQ"]).unwrap_err();
        assert!(matches!(err, KeyError::WrongLength { index: 2, len: 5 }));
        assert!(matches!(
            TokenCodec::new(&["not base64!"]),
            Err(KeyError::NotBase64 { index: 1 })
        ));
    }

    #[test]
    fn webpush_tokens_round_trip_and_never_open_as_another_kind() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let key = [4u8; 65];
        let v1 = codec.encode_webpush(&uaid, &channel, None);
        let v2 = codec.encode_webpush(&uaid, &channel, Some(&key));
        let id = MessageId::from("0000019a2b3c4d5e-00000001");
        let message = codec.encode_message(&uaid, &channel, &id);
        let simplepush = codec.encode(&uaid, &channel);

        let target = |digest| WebPushTarget {
            uaid: uaid.clone(),
            channel: channel.clone(),
            key_digest: digest,
        };
        assert_eq!(
            codec.decode_webpush(WebPushVersion::V1, &v1),
            Some(target(None))
        );
        assert_eq!(
            codec.decode_webpush(WebPushVersion::V2, &v2),
            Some(target(Some(key_digest(&key))))
        );
        assert_eq!(
            codec.decode_message(&message),
            Some((uaid.clone(), channel.clone(), id))
        );
        for (token, kind) in [
            (&v1, "v1"),
            (&v2, "v2"),
            (&message, "message"),
            (&simplepush, "simplepush"),
        ] {
            let opened = [
                codec.decode(token).is_some(),
                codec.decode_webpush(WebPushVersion::V1, token).is_some(),
                codec.decode_webpush(WebPushVersion::V2, token).is_some(),
                codec.decode_message(token).is_some(),
            ];
            assert_eq!(
                opened.iter().filter(|o| **o).count(),
                1,
                "{kind}: {opened:?}"
            );
        }
    }

    #[test]
    fn v2_tokens_bind_the_digest_of_their_key() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let (a, b) = ([4u8; 65], [5u8; 65]);
        let token = codec.encode_webpush(&uaid, &channel, Some(&a));
        let digest = codec
            .decode_webpush(WebPushVersion::V2, &token)
            .and_then(|t| t.key_digest);
        assert_eq!(digest, Some(key_digest(&a)));
        assert_ne!(digest, Some(key_digest(&b)));
    }

    #[test]
    fn webpush_tokens_reject_flipped_bits_and_foreign_keys() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let raw = URL_SAFE_NO_PAD
            .decode(codec.encode_webpush(&uaid, &channel, Some(&[4u8; 65])))
            .unwrap();
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let token = URL_SAFE_NO_PAD.encode(&flipped);
            assert_eq!(
                codec.decode_webpush(WebPushVersion::V2, &token),
                None,
                "bit {bit}"
            );
        }
        let other = TokenCodec::new(&[generate_key()]).unwrap();
        let token = codec.encode_message(&uaid, &channel, &MessageId::from("m1"));
        assert_eq!(other.decode_message(&token), None);
    }
}

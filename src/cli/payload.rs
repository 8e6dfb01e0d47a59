//! A WebPush message's payload (RFC 8291): encrypted by the app server for one
//! subscription's keys with the `aes128gcm` content coding (RFC 8188), decrypted by the
//! device. The crypto is the `web-push-native` crate (RustCrypto's p256, hkdf and aes-gcm);
//! this file only checks what that crate would not, and names the failures.

use p256::{PublicKey, SecretKey};
use web_push_native::Auth;

/// The length of the auth secret a subscription shares with its app servers.
pub const AUTH_LEN: usize = 16;

/// The `aes128gcm` header before the key id: salt (16), record size (4), id length (1).
const HEADER_LEN: usize = 21;
/// The smallest record size RFC 8188 allows: one byte of delimiter and a 16-byte tag,
/// and one more.
const MIN_RECORD_SIZE: u32 = 18;
/// The key id of RFC 8291: the sender's uncompressed P-256 point.
const KEY_ID_LEN: usize = 65;

/// Why a payload could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// An empty plaintext: it would need a record smaller than RFC 8188 allows.
    #[error("an empty message cannot be encrypted (send none instead)")]
    Empty,
    /// The body is not an `aes128gcm` header followed by records.
    #[error("not an aes128gcm body: {0}")]
    Malformed(String),
    /// The body does not decrypt with these keys (or was damaged).
    #[error("does not decrypt with this subscription's keys ({0})")]
    Decrypt(String),
    /// The crate refused to encrypt.
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

/// Encrypts `plaintext` for a subscription (its `p256dh` key and auth secret) as one
/// `aes128gcm` record, with a fresh salt and sender key.
pub fn encrypt(
    p256dh: &PublicKey,
    auth: &[u8; AUTH_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, PayloadError> {
    if plaintext.is_empty() {
        return Err(PayloadError::Empty);
    }
    web_push_native::encrypt(plaintext.to_vec(), p256dh, &Auth::clone_from_slice(auth))
        .map_err(|e| PayloadError::Encrypt(e.to_string()))
}

/// Decrypts an `aes128gcm` body sent to the subscription whose private key is `secret`.
pub fn decrypt(
    secret: &SecretKey,
    auth: &[u8; AUTH_LEN],
    body: &[u8],
) -> Result<Vec<u8>, PayloadError> {
    let malformed = |what: String| PayloadError::Malformed(what);
    let Some(header) = body.get(..HEADER_LEN) else {
        return Err(malformed(format!(
            "{} bytes, shorter than its header",
            body.len()
        )));
    };
    // The crate splits records by this size: zero would never end.
    let record_size = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    if record_size < MIN_RECORD_SIZE {
        return Err(malformed(format!("record size {record_size} below 18")));
    }
    let key_id_len = usize::from(header[20]);
    if key_id_len != KEY_ID_LEN {
        return Err(malformed(format!(
            "key id of {key_id_len} bytes, not the sender's 65-byte public key"
        )));
    }
    if body.len() <= HEADER_LEN + KEY_ID_LEN {
        return Err(malformed("no records after the header".to_owned()));
    }
    web_push_native::decrypt(body.to_vec(), secret, &Auth::clone_from_slice(auth))
        .map_err(|e| PayloadError::Decrypt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    fn unb64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    fn auth(text: &str) -> [u8; AUTH_LEN] {
        unb64(text).try_into().unwrap()
    }

    /// The example of RFC 8291 §5: the user agent's keys, its auth secret, and what the
    /// application server sent.
    const RFC_UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const RFC_UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const RFC_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const RFC_BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
    const RFC_PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";

    fn rfc_secret() -> SecretKey {
        SecretKey::from_slice(&unb64(RFC_UA_PRIVATE)).unwrap()
    }

    #[test]
    fn decrypts_the_example_of_rfc_8291() {
        let secret = rfc_secret();
        assert_eq!(
            secret.public_key().to_encoded_point(false).as_bytes(),
            unb64(RFC_UA_PUBLIC)
        );
        let plaintext = decrypt(&secret, &auth(RFC_AUTH), &unb64(RFC_BODY)).unwrap();
        assert_eq!(plaintext, RFC_PLAINTEXT);
    }

    #[test]
    fn the_example_does_not_decrypt_with_another_auth_secret_or_a_flipped_bit() {
        let secret = rfc_secret();
        let other_auth = [7u8; AUTH_LEN];
        assert!(matches!(
            decrypt(&secret, &other_auth, &unb64(RFC_BODY)),
            Err(PayloadError::Decrypt(_))
        ));
        let mut body = unb64(RFC_BODY);
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(matches!(
            decrypt(&secret, &auth(RFC_AUTH), &body),
            Err(PayloadError::Decrypt(_))
        ));
    }

    #[test]
    fn what_we_encrypt_the_ece_crate_decrypts() {
        let (keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        let p256dh = PublicKey::from_sec1_bytes(&keys.pub_as_raw().unwrap()).unwrap();
        let plaintext = "ünïcödé, and a\nnewline".as_bytes();
        let body = encrypt(&p256dh, &auth, plaintext).unwrap();
        let components = keys.raw_components().unwrap();
        assert_eq!(ece::decrypt(&components, &auth, &body).unwrap(), plaintext);
        // A fresh salt and sender key each time.
        assert_ne!(encrypt(&p256dh, &auth, plaintext).unwrap(), body);
    }

    #[test]
    fn what_the_ece_crate_encrypts_we_decrypt() {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        let auth = [42u8; AUTH_LEN];
        let public = secret.public_key().to_encoded_point(false);
        let plaintext = vec![b'x'; 3000];
        let body = ece::encrypt(public.as_bytes(), &auth, &plaintext).unwrap();
        assert_eq!(decrypt(&secret, &auth, &body).unwrap(), plaintext);
    }

    #[test]
    fn empty_plaintext_is_refused() {
        let secret = rfc_secret();
        assert_eq!(
            encrypt(&secret.public_key(), &[0; AUTH_LEN], b""),
            Err(PayloadError::Empty)
        );
    }

    #[test]
    fn malformed_bodies_are_named_not_panicked_on() {
        let secret = rfc_secret();
        let auth = auth(RFC_AUTH);
        let good = unb64(RFC_BODY);
        let with = |at: usize, byte: u8| {
            let mut body = good.clone();
            body[at] = byte;
            body
        };
        for body in [
            Vec::new(),
            good[..20].to_vec(),
            // Record sizes 0 and 17 (bytes 16..20).
            [&good[..16], &[0, 0, 0, 0], &good[20..]].concat(),
            [&good[..16], &[0, 0, 0, 17], &good[20..]].concat(),
            // A key id of another length.
            with(20, 64),
            // Only the header.
            good[..HEADER_LEN + KEY_ID_LEN].to_vec(),
        ] {
            assert!(
                matches!(
                    decrypt(&secret, &auth, &body),
                    Err(PayloadError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }
}

//! The app server of the Firefox check: encrypts a message for a subscription (RFC 8291,
//! `aes128gcm`) and POSTs it to the subscription's endpoint signed with VAPID (RFC 8292).
//!
//! Everything goes through [`push`], shaped like the `simplepush push --subscription FILE
//! --data TEXT --vapid-key FILE` command (a PKCS#8 PEM private key), so that the check can
//! switch to that command once the binary has it. The cryptography is the crates':
//! `web-push-native` (pure Rust, RustCrypto) encrypts and `ring` signs; the only thing
//! written here is the PEM armour and the JWT's JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use web_push_native::p256::PublicKey;

/// The `sub` claim of every VAPID token: who runs this app server.
const CONTACT: &str = "mailto:firefox-check@localhost";
/// The `TTL` of every push (seconds): long enough to outlive a browser restart.
const TTL_SECS: u64 = 300;
/// How long the POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The PEM label of a PKCS#8 private key.
const PEM_LABEL: &str = "PRIVATE KEY";

/// A VAPID key pair (P-256) of this run: the private key in a PKCS#8 PEM file, the
/// public key as the page passes it to `pushManager.subscribe`.
#[derive(Debug)]
pub struct VapidKey {
    path: PathBuf,
    public_b64: String,
}

impl VapidKey {
    /// Generates a key pair and writes its private key to `dir/vapid.pem`.
    pub fn generate(dir: &Path) -> Result<VapidKey> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key failed"))?;
        let pair = load_pkcs8(pkcs8.as_ref())?;
        let path = dir.join("vapid.pem");
        std::fs::write(&path, pem_encode(pkcs8.as_ref()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(VapidKey {
            path,
            public_b64: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        })
    }

    /// The PEM file holding the private key.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key, base64url (65-byte uncompressed point): `applicationServerKey`.
    pub fn public_b64(&self) -> &str {
        &self.public_b64
    }
}

/// Encrypts `text` for the subscription (`PushSubscription.toJSON()`: `endpoint` and
/// `keys.p256dh`, `keys.auth`), POSTs it to the endpoint with VAPID made with the PKCS#8
/// PEM key in `vapid_key`, and returns the HTTP status of the answer.
pub fn push(subscription_json: &str, text: &str, vapid_key: &Path) -> Result<u16> {
    let subscription: Value =
        serde_json::from_str(subscription_json).context("the subscription is not JSON")?;
    let endpoint = subscription["endpoint"]
        .as_str()
        .context("the subscription has no endpoint")?;
    let p256dh = decode_b64url(&subscription["keys"]["p256dh"], "keys.p256dh")?;
    let auth = decode_b64url(&subscription["keys"]["auth"], "keys.auth")?;
    let p256dh = PublicKey::from_sec1_bytes(&p256dh)
        .map_err(|_| anyhow::anyhow!("keys.p256dh is not a P-256 point"))?;
    if auth.len() != 16 {
        bail!("keys.auth is {} bytes, not 16", auth.len());
    }
    let body = web_push_native::encrypt(
        text.as_bytes().to_vec(),
        &p256dh,
        &web_push_native::Auth::clone_from_slice(&auth),
    )
    .map_err(|err| anyhow::anyhow!("encrypting the message: {err}"))?;

    let pem = std::fs::read_to_string(vapid_key)
        .with_context(|| format!("reading {}", vapid_key.display()))?;
    let pair = load_pkcs8(&pem_decode(&pem)?)?;
    let audience = reqwest::Url::parse(endpoint)
        .with_context(|| format!("endpoint {endpoint:?}"))?
        .origin()
        .ascii_serialization();
    let claims = json!({
        "aud": audience,
        "exp": unix_now() + 12 * 3600,
        "sub": CONTACT,
    });
    let authorization = format!(
        "vapid t={}, k={}",
        sign_jwt(&pair, &claims)?,
        URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the POST")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("an HTTP client")?;
        let response = client
            .post(endpoint)
            .header("TTL", TTL_SECS.to_string())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", authorization)
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {endpoint}"))?;
        Ok(response.status().as_u16())
    })
}

/// A signing key from PKCS#8 DER.
fn load_pkcs8(der: &[u8]) -> Result<EcdsaKeyPair> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
        .map_err(|err| anyhow::anyhow!("not a PKCS#8 P-256 private key: {err}"))
}

/// An ES256 JWT (RFC 7515 compact form) over `claims`.
fn sign_jwt(pair: &EcdsaKeyPair, claims: &Value) -> Result<String> {
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "ES256"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let signature = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| anyhow::anyhow!("signing the VAPID token failed"))?;
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

/// Base64url, padded or not (browsers send it unpadded).
fn decode_b64url(value: &Value, what: &str) -> Result<Vec<u8>> {
    let text = value
        .as_str()
        .with_context(|| format!("the subscription has no {what}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .with_context(|| format!("{what} is not base64url"))
}

/// PEM armour around DER: base64 in lines of 64 between BEGIN and END lines.
fn pem_encode(der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    pem
}

/// The DER inside a `PRIVATE KEY` PEM block.
fn pem_decode(pem: &str) -> Result<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let start = pem.find(&begin).context("no BEGIN PRIVATE KEY line")? + begin.len();
    let stop = pem[start..].find(&end).context("no END PRIVATE KEY line")? + start;
    let base64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD
        .decode(base64)
        .context("the PEM body is not base64")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use serde_json::json;

    use super::{VapidKey, load_pkcs8, pem_decode, sign_jwt};

    #[test]
    fn the_key_file_round_trips_and_signs_verifiable_tokens() {
        let dir = crate::bench::ScratchDir::new("vapid-test").unwrap();
        let key = VapidKey::generate(dir.path()).unwrap();
        let pem = std::fs::read_to_string(key.path()).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
        let pair = load_pkcs8(&pem_decode(&pem).unwrap()).unwrap();

        let public = URL_SAFE_NO_PAD.decode(key.public_b64()).unwrap();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 4, "an uncompressed point");

        let jwt = sign_jwt(&pair, &json!({"aud": "http://localhost:1"})).unwrap();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(input.as_bytes(), &signature)
            .expect("the token verifies with the public key");
        let claims = URL_SAFE_NO_PAD
            .decode(input.split('.').nth(1).unwrap())
            .unwrap();
        assert_eq!(claims, br#"{"aud":"http://localhost:1"}"#);
    }

    #[test]
    fn a_damaged_key_file_is_refused() {
        assert!(pem_decode("no pem here").is_err());
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(load_pkcs8(&pem_decode(pem).unwrap()).is_err());
    }
}

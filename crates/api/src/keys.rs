//! Ed25519 signing keys for access tokens and the JWKS that publishes them.
//!
//! Keys are PKCS#8 PEM files `<kid>.pem` in the key directory (`openssl genpkey -algorithm
//! ed25519` makes one). The newest file by name signs; all are published and verify, so a
//! rotated-out key's tokens stay valid until they expire. In development a missing key is
//! generated on first start.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::{Value, json};

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
}

pub struct KeyStore {
    pub current: SigningKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {0}: {1}")]
    Io(String, std::io::Error),
    #[error("key file {0} is not a PKCS#8 Ed25519 private key in PEM form")]
    Format(String),
    #[error(
        "no signing key in {0}; create one with `openssl genpkey -algorithm ed25519 -out {0}/<kid>.pem`"
    )]
    Missing(String),
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).ok()
}

fn seed_of(der: &[u8]) -> Option<[u8; 32]> {
    if der.len() == 48 && der[..16] == PKCS8_ED25519_PREFIX {
        der[16..].try_into().ok()
    } else {
        None
    }
}

fn der_of(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// Writes a new key into `dir` and returns its kid.
pub fn generate_key(dir: &Path) -> Result<String, KeyError> {
    let display = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(display.clone(), e))?;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let kid = format!("k{}", chrono::Utc::now().format("%Y%m%d%H%M%S%6f"));
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der_of(&seed))
    );
    let path = dir.join(format!("{kid}.pem"));
    write_private(&path, pem.as_bytes()).map_err(|e| KeyError::Io(display, e))?;
    Ok(kid)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

impl KeyStore {
    /// Loads every key in `dir`; generates one first when the directory holds none and
    /// `generate` is allowed.
    pub fn load(dir: &Path, generate: bool) -> Result<KeyStore, KeyError> {
        let display = dir.display().to_string();
        let mut names = list_keys(dir)?;
        if names.is_empty() {
            if !generate {
                return Err(KeyError::Missing(display));
            }
            let kid = generate_key(dir)?;
            log::warn!(
                "generated a development signing key {kid} in {display}; production needs CRM_KEY_DIR with its own keys"
            );
            names = list_keys(dir)?;
        }
        names.sort();
        let mut verifying = HashMap::new();
        let mut jwks_keys = Vec::new();
        let mut current = None;
        for kid in &names {
            let path = dir.join(format!("{kid}.pem"));
            let pem =
                std::fs::read_to_string(&path).map_err(|e| KeyError::Io(display.clone(), e))?;
            let der =
                pem_to_der(&pem).ok_or_else(|| KeyError::Format(path.display().to_string()))?;
            let seed = seed_of(&der).ok_or_else(|| KeyError::Format(path.display().to_string()))?;
            let public = ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes();
            let x = URL_SAFE_NO_PAD.encode(public);
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|_| KeyError::Format(path.display().to_string()))?;
            verifying.insert(kid.clone(), decoding);
            jwks_keys.push(json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"
            }));
            current = Some(SigningKey {
                kid: kid.clone(),
                encoding: EncodingKey::from_ed_der(&der),
            });
        }
        let current = current.ok_or(KeyError::Missing(display))?;
        Ok(KeyStore {
            current,
            verifying,
            jwks: json!({ "keys": jwks_keys }),
        })
    }

    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid)
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }
}

/// The names of the files in the key directory (none when it does not exist yet).
fn file_names(dir: &Path) -> Result<Vec<String>, KeyError> {
    let display = dir.display().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::Io(display, e)),
    };
    entries
        .map(|entry| {
            entry
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(|e| KeyError::Io(display.clone(), e))
        })
        .collect()
}

fn list_keys(dir: &Path) -> Result<Vec<String>, KeyError> {
    Ok(file_names(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".pem").map(str::to_owned))
        .collect())
}

const SUPPRESSION_FILE: &str = "suppression.secret";
const SSO_FILE: &str = "sso.secret";

/// Loads a 32-byte secret (64 hex characters in `<key dir>/<file>`), generating it in
/// development.
fn load_secret32(dir: &Path, file: &str, generate: bool) -> Result<[u8; 32], KeyError> {
    let display = dir.display().to_string();
    let path = dir.join(file);
    if !path.exists() {
        if !generate {
            return Err(KeyError::Missing(format!(
                "{display} (no {file}: 32 random bytes as 64 hex characters)"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(display.clone(), e))?;
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let hex = crm_domain::secrets::hex(&bytes);
        write_private(&path, hex.as_bytes()).map_err(|e| KeyError::Io(display.clone(), e))?;
        log::warn!("generated a development {file} in {display}");
    }
    let raw = std::fs::read_to_string(&path).map_err(|e| KeyError::Io(display.clone(), e))?;
    let raw = raw.trim();
    let bytes: Option<Vec<u8>> = (raw.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&raw[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten();
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Format(path.display().to_string()))
}

/// Loads the keys of personal data: the key-encryption keys `<key dir>/data-<n>.kek` (64 hex
/// characters each; the highest `n` wraps new data keys, every one opens what it wrapped) and
/// the suppression secret, which keys the blind indexes. In development a first KEK is
/// generated. Losing a KEK loses every contact whose data key it wrapped.
pub fn load_vault(dir: &Path, generate: bool) -> Result<crm_domain::vault::Vault, KeyError> {
    let mut ids = list_keks(dir)?;
    if ids.is_empty() {
        load_secret32(dir, &kek_file(1), generate)?;
        ids = list_keks(dir)?;
    }
    let mut keks = Vec::with_capacity(ids.len());
    for id in ids {
        keks.push((id, load_secret32(dir, &kek_file(id), false)?));
    }
    let index = load_suppression_secret(dir, generate)?;
    crm_domain::vault::Vault::new(keks, index)
        .map_err(|e| KeyError::Format(format!("{}: {e}", dir.display())))
}

/// Writes a new key-encryption key (the next number) and answers its id; it wraps new data
/// keys from the next start, and `crm keys retire-data-key` re-wraps the existing ones.
pub fn generate_kek(dir: &Path) -> Result<u16, KeyError> {
    let next = list_keks(dir)?.last().copied().unwrap_or(0) + 1;
    load_secret32(dir, &kek_file(next), true)?;
    Ok(next)
}

/// Deletes a key-encryption key's file (after everything it wrapped was re-wrapped with the
/// newest). Refuses the newest one, which wraps new data keys.
pub fn remove_kek(dir: &Path, id: u16) -> Result<(), KeyError> {
    let ids = list_keks(dir)?;
    if ids.last() == Some(&id) {
        return Err(KeyError::Format(format!(
            "{}: data-{id}.kek is the newest key-encryption key; rotate first",
            dir.display()
        )));
    }
    if !ids.contains(&id) {
        return Err(KeyError::Missing(format!(
            "{} (no data-{id}.kek)",
            dir.display()
        )));
    }
    let path = dir.join(kek_file(id));
    std::fs::remove_file(&path).map_err(|e| KeyError::Io(path.display().to_string(), e))
}

fn kek_file(id: u16) -> String {
    format!("data-{id}.kek")
}

/// The ids of the key-encryption keys in `dir`, ascending.
pub fn list_keks(dir: &Path) -> Result<Vec<u16>, KeyError> {
    let mut ids = Vec::new();
    for name in file_names(dir)? {
        if let Some(id) = name
            .strip_prefix("data-")
            .and_then(|n| n.strip_suffix(".kek"))
        {
            ids.push(
                id.parse::<u16>()
                    .map_err(|_| KeyError::Format(dir.join(&name).display().to_string()))?,
            );
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Loads the suppression secret (`<key dir>/suppression.secret`). Losing it makes existing
/// suppression entries unmatchable.
pub fn load_suppression_secret(
    dir: &Path,
    generate: bool,
) -> Result<crm_domain::suppression::SuppressionSecret, KeyError> {
    Ok(crm_domain::suppression::SuppressionSecret::from_bytes(
        load_secret32(dir, SUPPRESSION_FILE, generate)?,
    ))
}

/// Encrypts what the service must be able to read back but never show: SSO client secrets
/// (AES-256-GCM with a random nonce; the key is `<key dir>/sso.secret`, outside the database).
pub struct SecretBox {
    cipher: aes_gcm::Aes256Gcm,
    /// A MAC key derived from the same secret, for fingerprints that must not be guessable.
    mac_key: [u8; 32],
}

impl SecretBox {
    pub fn load(dir: &Path, generate: bool) -> Result<Self, KeyError> {
        use aes_gcm::aead::KeyInit;
        let key = load_secret32(dir, SSO_FILE, generate)?;
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key)
            .map_err(|_| KeyError::Format(dir.join(SSO_FILE).display().to_string()))?;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"crm fingerprint key\0");
        h.update(key);
        Ok(SecretBox {
            cipher,
            mac_key: h.finalize().into(),
        })
    }

    /// Hex HMAC-SHA256 over the parts (each length-prefixed, so boundaries count).
    pub fn fingerprint(&self, parts: &[&[u8]]) -> String {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.mac_key) else {
            unreachable!("HMAC takes keys of any length")
        };
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        crm_domain::secrets::hex(&mac.finalize().into_bytes())
    }

    /// base64(nonce || ciphertext).
    pub fn seal(&self, plain: &str) -> anyhow::Result<String> {
        use aes_gcm::aead::Aead;
        use base64::Engine;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(&nonce.into(), plain.as_bytes())
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<String> {
        use aes_gcm::aead::Aead;
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| anyhow::anyhow!("sealed secret is not base64"))?;
        if raw.len() < 12 {
            anyhow::bail!("sealed secret too short");
        }
        let (nonce, body) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let plain = self
            .cipher
            .decrypt(&nonce.into(), body)
            .map_err(|_| anyhow::anyhow!("sealed secret does not open with this key"))?;
        Ok(String::from_utf8(plain)?)
    }
}

/// The kids of the keys in `dir`, oldest first (the last one signs).
pub fn list_kids(dir: &Path) -> Result<Vec<String>, KeyError> {
    let mut kids = list_keys(dir)?;
    kids.sort();
    Ok(kids)
}

/// Removes a key: tokens it signed are refused once the service restarts. Refuses to remove
/// the only key.
pub fn remove_key(dir: &Path, kid: &str) -> Result<(), KeyError> {
    let display = dir.display().to_string();
    let kids = list_kids(dir)?;
    if !kids.iter().any(|k| k == kid) {
        return Err(KeyError::Missing(format!("{display}/{kid}.pem")));
    }
    if kids.len() == 1 {
        return Err(KeyError::Format(format!(
            "{display}/{kid}.pem is the only signing key"
        )));
    }
    std::fs::remove_file(dir.join(format!("{kid}.pem"))).map_err(|e| KeyError::Io(display, e))
}

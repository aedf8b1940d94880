//! Crypto-shredding: how an erasure reaches bytes the database keeps after a `DELETE`.
//!
//! PostgreSQL keeps a deleted or updated row's old version in its page until the space is
//! reused, in index pages, and in write-ahead-log segments that are recycled, not wiped; a
//! backup keeps everything. So the identifying values of a contact are never written in the
//! clear: each contact has its own random **data key**, every such value (names, e-mail, phone,
//! job title, the contact's event payloads, consent evidence, request notes) is sealed with it
//! (AES-256-GCM), and the data key itself is stored in the contact's row wrapped by a
//! **key-encryption key** (KEK) that lives in the key directory, never in the database.
//! Erasing the contact deletes its row and so its data key: whatever copies of the sealed
//! values remain in old row versions, WAL or backups can no longer be opened, once the KEKs
//! that wrapped the key are retired (`crm keys rotate-data-key` adds a KEK; once every node
//! has loaded it and no backup that needs the old one is kept, `crm keys retire-data-key`
//! re-wraps the live keys under the new one and deletes the old).
//!
//! Values that must be found by equality (the e-mail address) get a keyed blind index next to
//! them, the same tenant-scoped HMAC the suppression list uses.
//!
//! Formats: a sealed value is `s1:` + base64(nonce ‖ ciphertext ‖ tag), its field name bound
//! as associated data; a wrapped data key is kek id (2 bytes) ‖ nonce ‖ ciphertext ‖ tag, bound
//! to its tenant and contact. A value sealed under a KEK directly (data held for a short time
//! that is not one person's, e.g. an uploaded import file) is `k1:` + base64(kek id ‖ nonce ‖
//! ciphertext ‖ tag).

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use rand::RngCore;
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::ids::TenantId;
use crate::suppression::SuppressionSecret;
use crate::values::EmailAddress;

const NONCE: usize = 12;
const TAG: usize = 16;
/// The prefix of a value sealed with a data key.
pub(crate) const SEALED: &str = "s1:";
/// The prefix of a value sealed under a KEK directly.
pub(crate) const SYSTEM: &str = "k1:";
const WRAP_AAD: &[u8] = b"crm/data-key/v1";

/// The keys of personal data: the key-encryption keys (the newest wraps new data keys) and the
/// secret of the blind indexes.
pub struct Vault {
    keks: Vec<(u16, Aes256Gcm)>,
    index: SuppressionSecret,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u16> = self.keks.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Vault").field("kek_ids", &ids).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no key-encryption key")]
    NoKek,
    #[error("key-encryption key {0} appears twice")]
    Duplicate(u16),
}

/// One contact's data key, opened.
pub struct DataKey {
    cipher: Aes256Gcm,
    wrapped: Vec<u8>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::thread_rng().fill_bytes(&mut out);
    out
}

fn broken(what: &str) -> DomainError {
    DomainError::Internal(format!("sealed data does not open: {what}"))
}

fn cipher_of(key: &[u8; 32]) -> Aes256Gcm {
    // A 32-byte slice is always a valid AES-256 key.
    match Aes256Gcm::new_from_slice(key) {
        Ok(c) => c,
        Err(_) => unreachable!("AES-256 takes 32-byte keys"),
    }
}

fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plain: &[u8], prefix: &[u8]) -> Vec<u8> {
    let nonce = random::<NONCE>();
    let mut out = Vec::with_capacity(prefix.len() + NONCE + plain.len() + TAG);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    match cipher.encrypt(&nonce.into(), Payload { msg: plain, aad }) {
        Ok(ct) => out.extend_from_slice(&ct),
        // AES-GCM refuses only messages over 64 GiB.
        Err(_) => unreachable!("AES-GCM encrypts any message this service holds"),
    }
    out
}

fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    open_owned(cipher, aad, sealed.to_vec())
}

/// Opens `nonce ‖ ciphertext ‖ tag` in its own buffer, which becomes the plain value (a list
/// page opens ~250 values: one allocation each fewer than decrypting into a new buffer).
fn open_owned(cipher: &Aes256Gcm, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    let body_len = sealed.len().checked_sub(NONCE + TAG)?;
    let (nonce, rest) = sealed.split_at_mut(NONCE);
    let (body, tag) = rest.split_at_mut(body_len);
    let nonce: [u8; NONCE] = (*nonce).try_into().ok()?;
    let tag: [u8; TAG] = (*tag).try_into().ok()?;
    cipher
        .decrypt_inout_detached(&nonce.into(), aad, body.into(), &tag.into())
        .ok()?;
    sealed.truncate(NONCE + body_len);
    sealed.drain(..NONCE);
    Some(sealed)
}

fn wrap_aad(tenant: Uuid, contact: Uuid) -> [u8; 47] {
    let mut aad = [0u8; 47];
    aad[..15].copy_from_slice(WRAP_AAD);
    aad[15..31].copy_from_slice(tenant.as_bytes());
    aad[31..].copy_from_slice(contact.as_bytes());
    aad
}

impl Vault {
    /// `keks`: (id, key) pairs; the highest id wraps new data keys, every one opens.
    pub fn new(
        mut keks: Vec<(u16, [u8; 32])>,
        index: SuppressionSecret,
    ) -> Result<Self, VaultError> {
        if keks.is_empty() {
            return Err(VaultError::NoKek);
        }
        keks.sort_by_key(|(id, _)| *id);
        if let Some(w) = keks.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(VaultError::Duplicate(w[0].0));
        }
        Ok(Vault {
            keks: keks.iter().map(|(id, k)| (*id, cipher_of(k))).collect(),
            index,
        })
    }

    /// The id of the KEK that wraps new data keys.
    pub fn current_kek(&self) -> u16 {
        self.keks.last().map(|(id, _)| *id).unwrap_or_default()
    }

    fn current(&self) -> &(u16, Aes256Gcm) {
        match self.keks.last() {
            Some(k) => k,
            None => unreachable!("a vault has a KEK (checked in new)"),
        }
    }

    fn kek(&self, id: u16) -> DomainResult<&Aes256Gcm> {
        self.keks
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                DomainError::Internal(format!(
                    "data key wrapped by key-encryption key {id}, which is not in the key directory"
                ))
            })
    }

    /// A fresh data key for a contact, wrapped by the current KEK.
    pub fn new_data_key(&self, tenant: TenantId, contact: Uuid) -> DataKey {
        let key = random::<32>();
        let (id, kek) = self.current();
        let wrapped = seal_with(
            kek,
            &wrap_aad(tenant.as_uuid(), contact),
            &key,
            &id.to_be_bytes(),
        );
        DataKey {
            cipher: cipher_of(&key),
            wrapped,
        }
    }

    /// Opens a contact's stored (wrapped) data key.
    pub fn data_key(
        &self,
        tenant: TenantId,
        contact: Uuid,
        wrapped: &[u8],
    ) -> DomainResult<DataKey> {
        let key = self.unwrap(tenant, contact, wrapped)?;
        Ok(DataKey {
            cipher: cipher_of(&key),
            wrapped: wrapped.to_vec(),
        })
    }

    fn unwrap(&self, tenant: TenantId, contact: Uuid, wrapped: &[u8]) -> DomainResult<[u8; 32]> {
        let (id, sealed) = wrapped
            .split_first_chunk::<2>()
            .ok_or_else(|| broken("data key"))?;
        let kek = self.kek(u16::from_be_bytes(*id))?;
        let key = open_with(kek, &wrap_aad(tenant.as_uuid(), contact), sealed)
            .ok_or_else(|| broken("data key"))?;
        key.try_into().map_err(|_| broken("data key"))
    }

    /// The same data key wrapped by the current KEK (key rotation); `None` when it is already.
    pub fn rewrap(
        &self,
        tenant: TenantId,
        contact: Uuid,
        wrapped: &[u8],
    ) -> DomainResult<Option<Vec<u8>>> {
        let (id, kek) = self.current();
        if wrapped.get(..2) == Some(&id.to_be_bytes()[..]) {
            return Ok(None);
        }
        let key = self.unwrap(tenant, contact, wrapped)?;
        Ok(Some(seal_with(
            kek,
            &wrap_aad(tenant.as_uuid(), contact),
            &key,
            &id.to_be_bytes(),
        )))
    }

    /// The blind index of an e-mail address: equal addresses, equal index; not reversible
    /// without the secret.
    pub fn email_index(&self, tenant: TenantId, email: &EmailAddress) -> String {
        self.index.digest(tenant, email)
    }

    /// [`Vault::email_index`] of an address stored in its normalised form.
    pub(crate) fn email_index_normalised(&self, tenant: TenantId, email: &str) -> String {
        self.index.digest_normalised(tenant, email)
    }

    /// The suppression list's secret (its digests are the e-mail blind index).
    pub fn suppression(&self) -> &SuppressionSecret {
        &self.index
    }

    /// Seals data that is not one person's but must not be kept in the clear (an uploaded
    /// file while it is imported) under the current KEK.
    pub fn seal_system(&self, purpose: &str, plain: &str) -> String {
        let (id, kek) = self.current();
        let raw = seal_with(kek, purpose.as_bytes(), plain.as_bytes(), &id.to_be_bytes());
        format!("{SYSTEM}{}", B64.encode(raw))
    }

    /// [`Vault::seal_system`]'s output sealed again under the current KEK; `None` when it is
    /// already (or is not sealed at all).
    pub fn reseal_system(&self, purpose: &str, stored: &str) -> DomainResult<Option<String>> {
        let Some(body) = stored.strip_prefix(SYSTEM) else {
            return Ok(None);
        };
        let raw = B64.decode(body).map_err(|_| broken(purpose))?;
        if raw.get(..2) == Some(&self.current_kek().to_be_bytes()[..]) {
            return Ok(None);
        }
        let plain = self.open_system(purpose, stored)?;
        Ok(Some(self.seal_system(purpose, &plain)))
    }

    /// Opens [`Vault::seal_system`]'s output; a value without its prefix is returned as it is
    /// (written before values were sealed).
    pub fn open_system(&self, purpose: &str, stored: &str) -> DomainResult<String> {
        let Some(body) = stored.strip_prefix(SYSTEM) else {
            return Ok(stored.to_owned());
        };
        let raw = B64.decode(body).map_err(|_| broken(purpose))?;
        let (id, sealed) = raw
            .split_first_chunk::<2>()
            .ok_or_else(|| broken(purpose))?;
        let kek = self.kek(u16::from_be_bytes(*id))?;
        let plain = open_with(kek, purpose.as_bytes(), sealed).ok_or_else(|| broken(purpose))?;
        String::from_utf8(plain).map_err(|_| broken(purpose))
    }
}

impl DataKey {
    /// The key as stored: wrapped by a KEK.
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }

    /// `s1:` + base64(nonce ‖ ciphertext ‖ tag), bound to `field`.
    pub fn seal(&self, field: &str, plain: &str) -> String {
        let raw = seal_with(&self.cipher, field.as_bytes(), plain.as_bytes(), &[]);
        let mut out = String::with_capacity(SEALED.len() + raw.len() * 4 / 3 + 4);
        out.push_str(SEALED);
        B64.encode_string(raw, &mut out);
        out
    }

    pub fn seal_opt(&self, field: &str, plain: Option<&str>) -> Option<String> {
        plain.map(|p| self.seal(field, p))
    }

    /// Opens a value [`DataKey::seal`] wrote for `field`.
    pub fn open(&self, field: &str, stored: &str) -> DomainResult<String> {
        let body = stored.strip_prefix(SEALED).ok_or_else(|| broken(field))?;
        let raw = B64.decode(body).map_err(|_| broken(field))?;
        let plain = open_owned(&self.cipher, field.as_bytes(), raw).ok_or_else(|| broken(field))?;
        String::from_utf8(plain).map_err(|_| broken(field))
    }

    pub fn open_opt(&self, field: &str, stored: Option<String>) -> DomainResult<Option<String>> {
        stored.map(|s| self.open(field, &s)).transpose()
    }

    /// Opens a value of a column that held text in the clear before values were sealed: a
    /// value without the sealed prefix is returned as it is.
    pub fn open_stored(&self, field: &str, stored: Option<String>) -> DomainResult<Option<String>> {
        match stored {
            Some(s) if is_sealed(&s) => self.open(field, &s).map(Some),
            other => Ok(other),
        }
    }
}

/// The id of the KEK that wrapped a stored data key.
pub fn kek_of_wrapped(wrapped: &[u8]) -> Option<u16> {
    wrapped.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

/// The id of the KEK a [`Vault::seal_system`] value is sealed under (`None`: not such a value).
pub fn kek_of_system(stored: &str) -> Option<u16> {
    let raw = B64.decode(stored.strip_prefix(SYSTEM)?).ok()?;
    kek_of_wrapped(&raw)
}

/// Whether a stored value is sealed under a KEK directly ([`Vault::seal_system`]).
pub fn is_system_sealed(stored: &str) -> bool {
    stored.starts_with(SYSTEM)
}

/// Whether a stored value is sealed with a data key.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(keks: &[(u16, u8)]) -> Vault {
        let keks = keks.iter().map(|(id, b)| (*id, [*b; 32])).collect();
        match Vault::new(keks, SuppressionSecret::from_bytes([9; 32])) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sealed_values_open_only_with_their_key_field_and_contact() -> DomainResult<()> {
        let v = vault(&[(1, 1)]);
        let t = TenantId::from_uuid(Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let ka = v.new_data_key(t, a);
        let sealed = ka.seal("first_name", "Ada");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("Ada"));
        // A fresh nonce each time: equal values do not look equal.
        assert_ne!(sealed, ka.seal("first_name", "Ada"));
        let again = v.data_key(t, a, ka.wrapped())?;
        assert_eq!(again.open("first_name", &sealed)?, "Ada");
        // Another field's label, another contact's key, a key bound to another contact.
        assert!(again.open("last_name", &sealed).is_err());
        assert!(v.new_data_key(t, b).open("first_name", &sealed).is_err());
        assert!(v.data_key(t, b, ka.wrapped()).is_err());
        Ok(())
    }

    /// A sealed value opens whole or not at all: any byte changed (nonce, ciphertext, tag) or
    /// cut off is refused; the empty value round-trips.
    #[test]
    fn tampered_or_cut_values_do_not_open() -> DomainResult<()> {
        let v = vault(&[(1, 1)]);
        let key = v.new_data_key(TenantId::from_uuid(Uuid::now_v7()), Uuid::now_v7());
        assert_eq!(key.open("phone", &key.seal("phone", ""))?, "");
        let sealed = key.seal("phone", "+44 20 7946 0000");
        let raw = B64
            .decode(sealed.strip_prefix(SEALED).unwrap_or_default())
            .map_err(|_| broken("test"))?;
        let stored = |raw: &[u8]| format!("{SEALED}{}", B64.encode(raw));
        assert_eq!(key.open("phone", &stored(&raw))?, "+44 20 7946 0000");
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            assert!(
                key.open("phone", &stored(&bad)).is_err(),
                "byte {i} flipped"
            );
        }
        for len in 0..raw.len() {
            assert!(
                key.open("phone", &stored(&raw[..len])).is_err(),
                "cut to {len}"
            );
        }
        Ok(())
    }

    #[test]
    fn rotation_rewraps_under_the_newest_kek_and_old_keks_still_open() -> DomainResult<()> {
        let old = vault(&[(1, 1)]);
        let t = TenantId::from_uuid(Uuid::now_v7());
        let c = Uuid::now_v7();
        let k = old.new_data_key(t, c);
        let sealed = k.seal("email", "ada@example.org");
        let both = vault(&[(2, 2), (1, 1)]);
        assert_eq!(both.current_kek(), 2);
        let rewrapped = both.rewrap(t, c, k.wrapped())?;
        let Some(rewrapped) = rewrapped else {
            panic!("a key under KEK 1 is re-wrapped under KEK 2")
        };
        assert_eq!(both.rewrap(t, c, &rewrapped)?, None);
        // Once KEK 1 is gone, only the re-wrapped key opens.
        let new_only = vault(&[(2, 2)]);
        assert!(new_only.data_key(t, c, k.wrapped()).is_err());
        let opened = new_only.data_key(t, c, &rewrapped)?;
        assert_eq!(opened.open("email", &sealed)?, "ada@example.org");
        Ok(())
    }

    #[test]
    fn system_seal_round_trips_and_passes_legacy_text_through() -> DomainResult<()> {
        let v = vault(&[(3, 3)]);
        let sealed = v.seal_system("import", "name,email\nAda,ada@example.org");
        assert!(!sealed.contains("Ada"));
        assert_eq!(
            v.open_system("import", &sealed)?,
            "name,email\nAda,ada@example.org"
        );
        assert!(v.open_system("other", &sealed).is_err());
        assert_eq!(v.open_system("import", "plain")?, "plain");
        Ok(())
    }
}

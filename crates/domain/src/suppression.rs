//! The suppression list: keyed HMACs of the normalised e-mail addresses of erased people, so
//! they are never re-imported. A plain hash of an address is guessable; an HMAC under a
//! tenant-scoped key derived from a server secret (kept outside the database) is not.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sea_orm::ActiveValue::Set;
use sea_orm::{ConnectionTrait, EntityTrait, sea_query::OnConflict};
use sha2::Sha256;

use crate::entities::suppression;
use crate::error::DomainResult;
use crate::ids::TenantId;
use crate::tenancy::Tenant;
use crate::values::EmailAddress;

/// The server-wide secret from which each tenant's suppression key is derived.
#[derive(Clone)]
pub struct SuppressionSecret([u8; 32]);

impl std::fmt::Debug for SuppressionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuppressionSecret(***)")
    }
}

impl SuppressionSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SuppressionSecret(bytes)
    }

    fn tenant_key(&self, tenant: TenantId) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_mac());
        mac.update(b"suppression-key:");
        mac.update(tenant.as_uuid().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The keyed digest of a normalised address for a tenant.
    pub fn digest(&self, tenant: TenantId, email: &EmailAddress) -> String {
        self.digest_normalised(tenant, email.as_str())
    }

    /// [`SuppressionSecret::digest`] of an address already in its normalised form.
    pub(crate) fn digest_normalised(&self, tenant: TenantId, email: &str) -> String {
        self.digester(tenant).digest_normalised(email)
    }

    /// The tenant's digests, keyed once for many addresses (a bulk upsert's).
    pub(crate) fn digester(&self, tenant: TenantId) -> Digester {
        let key = self.tenant_key(tenant);
        Digester(<Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable_mac()))
    }
}

/// One tenant's keyed digest ([`SuppressionSecret::digester`]).
pub(crate) struct Digester(Hmac<Sha256>);

impl Digester {
    /// [`SuppressionSecret::digest_normalised`] under this digester's tenant.
    pub(crate) fn digest_normalised(&self, email: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(email.as_bytes());
        crate::secrets::hex(&mac.finalize().into_bytes())
    }
}

/// HMAC accepts keys of any length; this cannot happen.
fn unreachable_mac() -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("HMAC takes any key length")
}

pub async fn is_suppressed(
    db: &impl ConnectionTrait,
    secret: &SuppressionSecret,
    tenant: &Tenant,
    email: &EmailAddress,
) -> DomainResult<bool> {
    is_digest_suppressed(db, tenant.id(), &secret.digest(tenant.id(), email)).await
}

/// Whether the address with this digest ([`SuppressionSecret::digest`], also the e-mail's
/// blind index) is suppressed. A fixed statement: every contact written with an address
/// runs it.
pub(crate) async fn is_digest_suppressed(
    db: &impl ConnectionTrait,
    tenant: TenantId,
    digest: &str,
) -> DomainResult<bool> {
    use crate::db::{Param, fixed_one_in};
    const SQL: &str =
        "SELECT tenant_id FROM suppressions WHERE tenant_id = $1 AND email_hmac = $2 LIMIT 1";
    let params = [Param::Uuid(tenant.as_uuid()), Param::Text(digest)];
    Ok(fixed_one_in(db, SQL, &params).await?.is_some())
}

/// Which of `digests` (addresses' blind indexes) are on the tenant's suppression list: one
/// query (none for no digests). For checks of many addresses at once (bulk and grouped
/// writes).
pub(crate) async fn suppressed_among(
    db: &impl ConnectionTrait,
    tenant: TenantId,
    digests: impl IntoIterator<Item = String>,
) -> DomainResult<std::collections::HashSet<String>> {
    use sea_orm::{ColumnTrait, QueryFilter, QuerySelect};
    let digests: Vec<String> = digests.into_iter().collect();
    if digests.is_empty() {
        return Ok(Default::default());
    }
    Ok(suppression::Entity::find()
        .select_only()
        .column(suppression::Column::EmailHmac)
        .filter(suppression::Column::TenantId.eq(tenant.as_uuid()))
        .filter(crate::db::one_of(
            db.get_database_backend(),
            suppression::Column::EmailHmac,
            digests,
        ))
        .into_tuple::<String>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

pub(crate) async fn suppress(
    db: &impl ConnectionTrait,
    secret: &SuppressionSecret,
    tenant: TenantId,
    email: &EmailAddress,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    suppression::Entity::insert(suppression::ActiveModel {
        tenant_id: Set(tenant.as_uuid()),
        email_hmac: Set(secret.digest(tenant, email)),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([
            suppression::Column::TenantId,
            suppression::Column::EmailHmac,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_per_tenant() -> Result<(), crate::InvalidValue> {
        let secret = SuppressionSecret::from_bytes([9; 32]);
        let other = SuppressionSecret::from_bytes([8; 32]);
        let a = TenantId::new();
        let b = TenantId::new();
        let email = EmailAddress::parse("Ada@Example.com")?;
        let same = EmailAddress::parse("ada@example.com")?;
        assert_eq!(
            secret.digest(a, &email),
            secret.digest(a, &same),
            "normalised"
        );
        assert_ne!(
            secret.digest(a, &email),
            secret.digest(b, &email),
            "tenant-scoped"
        );
        assert_ne!(secret.digest(a, &email), other.digest(a, &email), "keyed");
        assert!(!secret.digest(a, &email).contains("example"));
        Ok(())
    }
}

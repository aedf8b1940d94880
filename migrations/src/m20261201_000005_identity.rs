//! Identity: WebAuthn credentials, short-lived ceremony state and sign-in tickets, the MFA
//! policy, OpenID Connect connections and the identities they link to users.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::helpers::{composite_fk, index, tenant_fk, tenant_key, ts, ts_null};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000005_identity"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("tenants")
                    .add_column(boolean("mfa_required").default(false))
                    .to_owned(),
            )
            .await?;
        // When this session last verified a WebAuthn credential (for step-up).
        manager
            .alter_table(
                Table::alter()
                    .table("sessions")
                    .add_column(ts_null("webauthn_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webauthn_credentials")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("user_id"))
                    // base64url of the authenticator's credential id: unique for the relying party.
                    .col(string_len_uniq("credential_id", 1400))
                    .col(string_len("name", 100))
                    // The webauthn-rs `Passkey` (public key, counter, flags) as JSON.
                    .col(text("passkey"))
                    .col(big_integer("sign_count"))
                    .col(ts("created_at"))
                    .col(ts_null("last_used_at"))
                    .index(&mut tenant_key("webauthn_credentials"))
                    .foreign_key(&mut tenant_fk("webauthn_credentials"))
                    .foreign_key(&mut composite_fk(
                        "webauthn_credentials",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "webauthn_credentials",
                "user",
                &["tenant_id", "user_id"],
                false,
            ))
            .await?;
        // Ceremony state (WebAuthn, OpenID Connect) and sign-in tickets: single use, minutes.
        manager
            .create_table(
                Table::create()
                    .table("auth_challenges")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid_null("user_id"))
                    .col(string_len("kind", 32))
                    // SHA-256 of the secret the client holds (tickets, OIDC state); else null.
                    .col(string_len_null("secret_hash", 64).unique_key())
                    .col(text("state"))
                    .col(ts("created_at"))
                    .col(ts("expires_at"))
                    .foreign_key(&mut tenant_fk("auth_challenges"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index("auth_challenges", "expiry", &["expires_at"], false))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("sso_connections")
                    .col(uuid("id").primary_key())
                    .col(uuid_uniq("tenant_id"))
                    .col(string_len("issuer", 500))
                    .col(string_len("client_id", 200))
                    // Encrypted with the service's SSO key (nonce || ciphertext, base64).
                    .col(text("client_secret_enc"))
                    .col(string_len("redirect_uri", 500))
                    .col(string_len("allowed_domains", 2000))
                    .col(boolean("jit_provisioning"))
                    .col(string_len("default_role", 16))
                    .col(boolean("enabled"))
                    .col(ts("created_at"))
                    .col(ts("updated_at"))
                    .foreign_key(&mut tenant_fk("sso_connections"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("user_identities")
                    .col(uuid("id").primary_key())
                    .col(uuid("tenant_id"))
                    .col(uuid("user_id"))
                    .col(string_len("issuer", 500))
                    .col(string_len("subject", 255))
                    .col(ts("created_at"))
                    .col(ts_null("last_login_at"))
                    .foreign_key(&mut tenant_fk("user_identities"))
                    .foreign_key(&mut composite_fk(
                        "user_identities",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "user_identities",
                "subject",
                &["tenant_id", "issuer", "subject"],
                true,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "user_identities",
            "sso_connections",
            "auth_challenges",
            "webauthn_credentials",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("sessions")
                    .drop_column("webauthn_at")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("tenants")
                    .drop_column("mfa_required")
                    .to_owned(),
            )
            .await
    }
}

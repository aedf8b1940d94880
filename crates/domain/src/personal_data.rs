//! The personal-data registry: every table and column the service writes, classified as
//! personal (with its category) or not, and what export and erasure do with it. Export,
//! redaction and erasure are driven by it, and a test fails when the schema has a column that
//! is not classified here.

/// Categories of personal data (for Art. 15(1)(b) and the records of processing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Names and identifiers of a person.
    Identity,
    /// E-mail addresses and telephone numbers.
    ContactDetails,
    /// Job title and professional details.
    Professional,
    /// What a person bought (through the link to the person).
    Transactions,
    /// Consent and its evidence.
    Consent,
    /// Data-subject requests and their handling.
    Requests,
    /// Staff accounts of the tenant (users), their credentials and sessions.
    Account,
    /// Pseudonymised values (keyed digests) that single out a person only with a secret.
    Pseudonymised,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::ContactDetails => "contact_details",
            Category::Professional => "professional",
            Category::Transactions => "transactions",
            Category::Consent => "consent",
            Category::Requests => "requests",
            Category::Account => "account",
            Category::Pseudonymised => "pseudonymised",
        }
    }
}

/// What erasing a contact does to the rows of a table that belong to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnErasure {
    /// Not about contacts (identity, configuration, other people).
    NotSubjectData,
    /// The contact's own row: deleted.
    Delete,
    /// Deleted, unless the law makes us keep it: then detached from the person (the link is
    /// the only personal value) and kept for the retention period.
    DeleteOrKeepDetached,
    /// Kept as the controller's record of compliance, detached, free text redacted.
    KeepDetachedRedacted,
    /// Deleted with their parent row.
    FollowsParent,
    /// Kept (an event's place in the change feed), its payload reduced to ids.
    ScrubbedToIds,
    /// Short-lived copies (stored responses of idempotent requests): the ones that name the
    /// person are deleted.
    DeleteReferencing,
}

#[derive(Clone, Copy, Debug)]
pub struct ColumnClass {
    pub name: &'static str,
    /// `None`: not personal data.
    pub personal: Option<Category>,
    /// Appears in a subject's export.
    pub exported: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct TableClass {
    pub name: &'static str,
    /// The column linking a row to a contact, if rows can belong to one.
    pub subject_link: Option<&'static str>,
    pub on_erasure: OnErasure,
    pub columns: &'static [ColumnClass],
}

const fn not(name: &'static str) -> ColumnClass {
    ColumnClass {
        name,
        personal: None,
        exported: false,
    }
}

const fn shown(name: &'static str) -> ColumnClass {
    ColumnClass {
        name,
        personal: None,
        exported: true,
    }
}

const fn personal(name: &'static str, category: Category) -> ColumnClass {
    ColumnClass {
        name,
        personal: Some(category),
        exported: true,
    }
}

/// Personal, but never exported (secrets and pseudonymised digests).
const fn hidden(name: &'static str, category: Category) -> ColumnClass {
    ColumnClass {
        name,
        personal: Some(category),
        exported: false,
    }
}

use Category::*;

pub const REGISTRY: &[TableClass] = &[
    TableClass {
        name: "tenants",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("slug"),
            not("name"),
            not("kind"),
            not("active"),
            not("created_at"),
            not("updated_at"),
            not("version"),
            not("mfa_required"),
        ],
    },
    TableClass {
        name: "users",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            hidden("email", Account),
            hidden("display_name", Account),
            not("role"),
            not("active"),
            not("created_at"),
            not("updated_at"),
            not("version"),
        ],
    },
    TableClass {
        name: "password_credentials",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("user_id"),
            not("tenant_id"),
            hidden("hash", Account),
            not("updated_at"),
        ],
    },
    TableClass {
        name: "sessions",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("user_id"),
            not("amr"),
            not("auth_time"),
            not("created_at"),
            not("expires_at"),
            not("revoked_at"),
            not("revoke_reason"),
            not("webauthn_at"),
        ],
    },
    TableClass {
        name: "breaches",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("scope"),
            not("title"),
            not("nature"),
            not("data_categories"),
            not("subjects_approx"),
            not("records_approx"),
            not("likely_consequences"),
            not("measures"),
            not("contact_point"),
            not("high_risk"),
            not("affected_contacts"),
            not("aware_at"),
            not("deadline_at"),
            not("status"),
            not("late_reason"),
            not("notified_at"),
            not("created_at"),
            not("updated_at"),
        ],
    },
    TableClass {
        name: "breach_tenants",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[not("breach_id"), not("tenant_id")],
    },
    TableClass {
        name: "breach_updates",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("breach_id"),
            not("note"),
            not("actor_id"),
            not("created_at"),
        ],
    },
    TableClass {
        // Messages to staff (notifications) and, for high-risk breaches, to data subjects:
        // erasure deletes the person's messages.
        name: "email_outbox",
        subject_link: None,
        on_erasure: OnErasure::Delete,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("topic"),
            not("topic_id"),
            not("recipient_kind"),
            hidden("to_address", ContactDetails),
            not("subject"),
            not("body"),
            not("status"),
            not("attempts"),
            not("next_attempt_at"),
            not("locked_until"),
            not("last_error"),
            not("sent_at"),
            not("created_at"),
            hidden("to_index", Pseudonymised),
        ],
    },
    TableClass {
        // The uploaded file is held only until it is processed.
        name: "import_jobs",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("actor_id"),
            not("format"),
            not("status"),
            not("total"),
            not("processed"),
            not("created"),
            not("updated"),
            not("failed"),
            not("errors"),
            hidden("payload", ContactDetails),
            not("locked_until"),
            not("created_at"),
            not("finished_at"),
        ],
    },
    TableClass {
        name: "idempotency_keys",
        subject_link: None,
        on_erasure: OnErasure::DeleteReferencing,
        columns: &[
            not("tenant_id"),
            not("caller"),
            not("key"),
            not("fingerprint"),
            not("state"),
            not("status"),
            not("headers"),
            hidden("body_enc", ContactDetails),
            not("refs"),
            not("created_at"),
            not("expires_at"),
        ],
    },
    TableClass {
        name: "rate_limits",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[not("key"), not("window_start"), not("count")],
    },
    TableClass {
        name: "job_runs",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[not("name"), not("next_run_at")],
    },
    TableClass {
        name: "events",
        subject_link: Some("subject_contact_id"),
        on_erasure: OnErasure::ScrubbedToIds,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("seq"),
            not("event_type"),
            not("object_type"),
            not("object_id"),
            not("subject_contact_id"),
            hidden("payload", ContactDetails),
            not("created_at"),
        ],
    },
    TableClass {
        name: "webhook_endpoints",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("url"),
            not("event_types"),
            not("description"),
            not("secret_enc"),
            not("active"),
            not("created_at"),
            not("updated_at"),
        ],
    },
    TableClass {
        name: "webhook_deliveries",
        subject_link: None,
        on_erasure: OnErasure::FollowsParent,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("endpoint_id"),
            not("event_id"),
            not("status"),
            not("attempts"),
            not("next_attempt_at"),
            not("locked_until"),
            not("last_attempt_at"),
            not("last_status"),
            not("last_error"),
            not("delivered_at"),
            not("created_at"),
        ],
    },
    TableClass {
        name: "webauthn_credentials",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("user_id"),
            hidden("credential_id", Account),
            hidden("name", Account),
            hidden("passkey", Account),
            not("sign_count"),
            not("created_at"),
            not("last_used_at"),
        ],
    },
    TableClass {
        name: "auth_challenges",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("user_id"),
            not("kind"),
            hidden("secret_hash", Account),
            hidden("state", Account),
            not("created_at"),
            not("expires_at"),
        ],
    },
    TableClass {
        name: "sso_connections",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("issuer"),
            not("client_id"),
            not("client_secret_enc"),
            not("redirect_uri"),
            not("allowed_domains"),
            not("jit_provisioning"),
            not("default_role"),
            not("enabled"),
            not("created_at"),
            not("updated_at"),
        ],
    },
    TableClass {
        name: "user_identities",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("user_id"),
            not("issuer"),
            hidden("subject", Account),
            not("created_at"),
            not("last_login_at"),
        ],
    },
    TableClass {
        name: "refresh_tokens",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("session_id"),
            hidden("token_hash", Account),
            not("created_at"),
            not("expires_at"),
            not("used_at"),
        ],
    },
    TableClass {
        name: "auth_throttle",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            hidden("key", Pseudonymised),
            not("failures"),
            not("window_started_at"),
            not("locked_until"),
        ],
    },
    TableClass {
        name: "companies",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("name"),
            not("domain"),
            hidden("phone", ContactDetails),
            not("industry"),
            not("created_at"),
            not("updated_at"),
            not("version"),
        ],
    },
    TableClass {
        name: "contacts",
        subject_link: Some("id"),
        on_erasure: OnErasure::Delete,
        columns: &[
            shown("id"),
            not("tenant_id"),
            shown("company_id"),
            personal("first_name", Identity),
            personal("last_name", Identity),
            personal("email", ContactDetails),
            personal("phone", ContactDetails),
            personal("job_title", Professional),
            shown("created_at"),
            shown("updated_at"),
            not("version"),
            shown("legal_hold"),
            shown("redacted_at"),
            // The key every identifying value above is sealed with (wrapped; see `vault`).
            hidden("data_key", Pseudonymised),
            hidden("email_index", Pseudonymised),
        ],
    },
    TableClass {
        name: "orders",
        subject_link: Some("contact_id"),
        on_erasure: OnErasure::DeleteOrKeepDetached,
        columns: &[
            shown("id"),
            not("tenant_id"),
            personal("contact_id", Transactions),
            shown("company_id"),
            shown("status"),
            shown("currency"),
            shown("total_minor"),
            shown("placed_at"),
            shown("created_at"),
            shown("updated_at"),
            not("version"),
        ],
    },
    TableClass {
        name: "order_lines",
        subject_link: None,
        on_erasure: OnErasure::FollowsParent,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("order_id"),
            shown("position"),
            shown("sku"),
            shown("description"),
            shown("quantity"),
            shown("unit_price_minor"),
            shown("line_total_minor"),
        ],
    },
    TableClass {
        name: "purposes",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("key"),
            not("name"),
            not("description"),
            not("created_at"),
        ],
    },
    TableClass {
        name: "consents",
        subject_link: Some("contact_id"),
        on_erasure: OnErasure::Delete,
        columns: &[
            shown("id"),
            not("tenant_id"),
            personal("contact_id", Consent),
            shown("purpose_id"),
            personal("status", Consent),
            personal("lawful_basis", Consent),
            personal("channel", Consent),
            personal("source", Consent),
            personal("evidence", Consent),
            shown("recorded_by"),
            shown("recorded_at"),
        ],
    },
    TableClass {
        name: "dsr_requests",
        subject_link: Some("contact_id"),
        on_erasure: OnErasure::KeepDetachedRedacted,
        columns: &[
            shown("id"),
            not("tenant_id"),
            personal("contact_id", Requests),
            shown("kind"),
            shown("received_at"),
            shown("due_at"),
            personal("extension_reason", Requests),
            shown("identity_verification"),
            shown("status"),
            personal("outcome", Requests),
            shown("erasure_id"),
            shown("closed_at"),
            shown("created_at"),
            shown("updated_at"),
            not("version"),
        ],
    },
    TableClass {
        name: "suppressions",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("tenant_id"),
            hidden("email_hmac", Pseudonymised),
            not("created_at"),
        ],
    },
    TableClass {
        name: "erasure_ledger",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("contact_id"),
            not("order_ids"),
            not("erased_at"),
        ],
    },
    TableClass {
        name: "gdpr_settings",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("tenant_id"),
            not("order_retention_days"),
            not("updated_at"),
        ],
    },
    TableClass {
        name: "retention_policies",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("record_type"),
            not("basis"),
            not("after_days"),
            not("action"),
            not("created_at"),
        ],
    },
    TableClass {
        name: "integration_clients",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("tenant_id"),
            not("client_id"),
            not("name"),
            hidden("secret_hash", Account),
            not("scopes"),
            not("active"),
            not("created_at"),
            not("updated_at"),
            not("secret_rotated_at"),
        ],
    },
    TableClass {
        name: "sub_processors",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("name"),
            not("purpose"),
            not("data_categories"),
            not("location"),
            not("transfer_safeguards"),
            not("since"),
            not("until"),
            not("created_at"),
            not("updated_at"),
            not("version"),
        ],
    },
    TableClass {
        name: "sub_processor_changes",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            not("id"),
            not("sub_processor_id"),
            not("change"),
            not("actor_id"),
            not("snapshot"),
            not("changed_at"),
        ],
    },
    TableClass {
        name: "audit_events",
        subject_link: None,
        on_erasure: OnErasure::NotSubjectData,
        columns: &[
            shown("id"),
            not("tenant_id"),
            not("seq"),
            shown("occurred_at"),
            shown("actor_id"),
            shown("actor_kind"),
            shown("action"),
            shown("object_type"),
            shown("object_id"),
            shown("request_id"),
            shown("details"),
            not("prev_hash"),
            not("hash"),
        ],
    },
];

/// Tables the service keeps for itself and that hold no data about anyone.
pub const INTERNAL_TABLES: &[&str] = &["seaql_migrations"];

pub fn table(name: &str) -> Option<&'static TableClass> {
    REGISTRY.iter().find(|t| t.name == name)
}

/// Columns of `table` that appear in a subject's export.
pub fn exported_columns(table_name: &str) -> Vec<&'static str> {
    table(table_name)
        .map(|t| {
            t.columns
                .iter()
                .filter(|c| c.exported)
                .map(|c| c.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Personal columns of `table` and their categories.
pub fn personal_columns(table_name: &str) -> Vec<(&'static str, Category)> {
    table(table_name)
        .map(|t| {
            t.columns
                .iter()
                .filter_map(|c| c.personal.map(|p| (c.name, p)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};

    /// Every column of the migrated schema is classified, and nothing classified is missing.
    #[tokio::test]
    async fn registry_classifies_every_column() -> Result<(), sea_orm::DbErr> {
        let db = crate::db::connect("sqlite::memory:").await?;
        Migrator::up(&db, None).await?;
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT m.name AS t, p.name AS c FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2",
            ))
            .await?;
        let mut schema = Vec::new();
        for row in rows {
            let t: String = row.try_get("", "t")?;
            let c: String = row.try_get("", "c")?;
            if INTERNAL_TABLES.contains(&t.as_str()) {
                continue;
            }
            let class = table(&t)
                .unwrap_or_else(|| panic!("table {t} is not in the personal-data registry"));
            assert!(
                class.columns.iter().any(|col| col.name == c),
                "column {t}.{c} is not classified in the personal-data registry"
            );
            schema.push(format!("{t}.{c}"));
        }
        for t in REGISTRY {
            for c in t.columns {
                let name = format!("{}.{}", t.name, c.name);
                assert!(
                    schema.contains(&name),
                    "registry names {name}, which the schema does not have"
                );
            }
        }
        Ok(())
    }
}

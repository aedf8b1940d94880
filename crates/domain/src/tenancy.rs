//! The tenant scope of a call. A `Tenant` is built only by the domain — from a verified session
//! or from a tenant it just created — so a caller cannot name a tenant it was not given.

use crate::ids::{TenantId, UserId};
use crate::values::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tenant {
    id: TenantId,
}

impl Tenant {
    pub(crate) fn scoped(id: TenantId) -> Self {
        Tenant { id }
    }

    pub fn id(&self) -> TenantId {
        self.id
    }
}

/// The authenticated caller: who, in which tenant, with which role, in which session.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: Tenant,
    pub tenant_kind: TenantKind,
    pub user_id: UserId,
    pub session_id: crate::ids::SessionId,
    pub role: Role,
    /// When this session last verified a WebAuthn credential (sign-in or step-up).
    pub webauthn_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantKind {
    /// The processor's own organisation; its users are platform admins.
    Platform,
    /// A customer organisation: a controller of personal data.
    Customer,
}

impl TenantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantKind::Platform => "platform",
            TenantKind::Customer => "customer",
        }
    }

    pub(crate) fn from_db(raw: &str) -> Self {
        if raw == "platform" {
            TenantKind::Platform
        } else {
            TenantKind::Customer
        }
    }
}

//! Constrained values. Parse, don't validate: once built, a value is known to be valid.

use std::fmt;

use crate::error::InvalidValue;

/// Trims and checks a free-text value: length in characters and no control characters.
pub fn text(raw: &str, min: usize, max: usize) -> Result<String, InvalidValue> {
    let value = raw.trim();
    let len = value.chars().count();
    if len < min {
        return Err(if min <= 1 {
            InvalidValue::new("blank", "must not be blank")
        } else {
            InvalidValue::new("too_short", format!("must be at least {min} characters"))
        });
    }
    if len > max {
        return Err(InvalidValue::new(
            "too_long",
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue::new(
            "invalid_characters",
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// An e-mail address, normalised: trimmed and lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let value = raw.trim().to_lowercase();
        let invalid = || InvalidValue::new("invalid_email", "must be an e-mail address");
        if value.is_empty() || value.len() > 254 {
            return Err(invalid());
        }
        let (local, domain) = value.rsplit_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || local.len() > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
            })
        {
            return Err(invalid());
        }
        if !is_hostname(domain) || !domain.contains('.') {
            return Err(invalid());
        }
        Ok(EmailAddress(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_hostname(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// A DNS domain name such as `example.com` (a company's web domain), lower-cased.
pub fn domain_name(raw: &str) -> Result<String, InvalidValue> {
    let value = raw.trim().trim_end_matches('.').to_lowercase();
    if is_hostname(&value) && value.contains('.') {
        Ok(value)
    } else {
        Err(InvalidValue::new(
            "invalid_domain",
            "must be a domain name such as example.com",
        ))
    }
}

/// A telephone number: digits with the usual separators, optionally a leading `+`.
pub fn phone(raw: &str) -> Result<String, InvalidValue> {
    let value = raw.trim();
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let ok = digits >= 3
        && value.len() <= 32
        && value
            .char_indices()
            .all(|(i, c)| c.is_ascii_digit() || " -().".contains(c) || (c == '+' && i == 0));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(InvalidValue::new(
            "invalid_phone",
            "must be a telephone number: digits, spaces, - ( ) . and an optional leading +",
        ))
    }
}

/// A tenant's URL-safe name: 2–63 of `a-z 0-9 -`, not starting or ending with `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let value = raw.trim();
        let ok = (2..=63).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !value.starts_with('-')
            && !value.ends_with('-');
        if ok {
            Ok(TenantSlug(value.to_owned()))
        } else {
            Err(InvalidValue::new(
                "invalid_slug",
                "must be 2-63 characters of a-z, 0-9 and -, not starting or ending with -",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user may do. Tenant users have one of `admin`, `dpo`, `member`, `viewer`; the
/// processor's own staff are `platform_admin` in the platform tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    PlatformAdmin,
    Admin,
    Dpo,
    Member,
    Viewer,
}

impl Role {
    pub const TENANT_ROLES: [Role; 4] = [Role::Admin, Role::Dpo, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::Admin => "admin",
            Role::Dpo => "dpo",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "platform_admin" => Ok(Role::PlatformAdmin),
            "admin" => Ok(Role::Admin),
            "dpo" => Ok(Role::Dpo),
            "member" => Ok(Role::Member),
            "viewer" => Ok(Role::Viewer),
            _ => Err(InvalidValue::new(
                "invalid_role",
                "must be one of admin, dpo, member, viewer",
            )),
        }
    }

    /// Parses a role a tenant admin may grant.
    pub fn parse_tenant_role(raw: &str) -> Result<Self, InvalidValue> {
        match Role::parse(raw)? {
            Role::PlatformAdmin => Err(InvalidValue::new(
                "invalid_role",
                "must be one of admin, dpo, member, viewer",
            )),
            role => Ok(role),
        }
    }

    /// May read CRM records (companies, contacts, orders).
    pub fn can_read_crm(self) -> bool {
        !matches!(self, Role::PlatformAdmin)
    }

    /// May create, change and delete CRM records.
    pub fn can_write_crm(self) -> bool {
        matches!(self, Role::Admin | Role::Dpo | Role::Member)
    }

    pub fn is_tenant_admin(self) -> bool {
        matches!(self, Role::Admin)
    }
}

/// An active ISO 4217 currency code, upper-case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencyCode(String);

/// Active ISO 4217 codes (list of 2026), excluding funds and precious metals.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD",
    "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF",
    "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN",
    "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD",
    "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES",
    "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL",
    "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP",
    "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK",
    "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT",
    "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

impl CurrencyCode {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if ISO_4217.contains(&raw) {
            Ok(CurrencyCode(raw.to_owned()))
        } else {
            Err(InvalidValue::new(
                "invalid_currency",
                "must be an active ISO 4217 currency code in upper case, e.g. EUR",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The life cycle of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Draft,
    Placed,
    Paid,
    Fulfilled,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Draft,
        OrderStatus::Placed,
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Draft => "draft",
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        OrderStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                InvalidValue::new(
                    "invalid_status",
                    "must be one of draft, placed, paid, fulfilled, cancelled, refunded",
                )
            })
    }

    /// draft → placed | cancelled; placed → paid | cancelled; paid → fulfilled | refunded;
    /// fulfilled → refunded. Cancelled and refunded are final.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        self == next
            || matches!(
                (self, next),
                (Draft, Placed)
                    | (Draft, Cancelled)
                    | (Placed, Paid)
                    | (Placed, Cancelled)
                    | (Paid, Fulfilled)
                    | (Paid, Refunded)
                    | (Fulfilled, Refunded)
            )
    }

    /// Lines and currency can change only while the order is a draft.
    pub fn is_editable(self) -> bool {
        self == OrderStatus::Draft
    }

    /// Orders that reached the books are kept; only drafts and cancelled orders may be deleted.
    pub fn is_deletable(self) -> bool {
        matches!(self, OrderStatus::Draft | OrderStatus::Cancelled)
    }
}

/// A JSON Merge Patch field: absent leaves the value alone, `null` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Patch<T> {
    /// Applies the patch to an optional column value.
    pub fn apply_to(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Absent => current,
            Patch::Null => None,
            Patch::Value(v) => Some(v),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(v) => Patch::Value(f(v)),
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Patch::Absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            EmailAddress::parse("  Ada.Lovelace@Example.COM ")
                .map(|e| e.as_str().to_owned())
                .ok(),
            Some("ada.lovelace@example.com".to_owned())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a b@example.com",
            "ada@exa_mple.com",
            "ada@-example.com",
            ".ada@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn order_status_transitions() {
        use OrderStatus::*;
        assert!(Draft.can_become(Placed));
        assert!(Placed.can_become(Paid));
        assert!(!Draft.can_become(Paid));
        assert!(!Cancelled.can_become(Placed));
        assert!(!Refunded.can_become(Paid));
        assert!(Draft.is_deletable() && !Paid.is_deletable());
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(text("  Ada ", 1, 10).ok().as_deref(), Some("Ada"));
        assert_eq!(text("   ", 1, 10).map_err(|e| e.code), Err("blank"));
        assert_eq!(text("abcdef", 1, 5).map_err(|e| e.code), Err("too_long"));
        assert_eq!(
            text("a\u{0}b", 1, 5).map_err(|e| e.code),
            Err("invalid_characters")
        );
    }

    #[test]
    fn currencies_and_slugs() {
        assert!(CurrencyCode::parse("EUR").is_ok());
        assert!(CurrencyCode::parse("eur").is_err());
        assert!(CurrencyCode::parse("XXX").is_err());
        assert!(TenantSlug::parse("acme-gmbh").is_ok());
        assert!(TenantSlug::parse("-acme").is_err());
        assert!(TenantSlug::parse("Acme").is_err());
    }

    #[test]
    fn phones() {
        assert!(phone("+44 (0)20 7946 0958").is_ok());
        assert!(phone("12").is_err());
        assert!(phone("call me").is_err());
        assert!(phone("44+1").is_err());
    }
}

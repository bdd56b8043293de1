//! Tenants: every job belongs to the tenant of the credential that created it, and tenants are
//! walls (ARCHITECTURE.md). Who a caller is gets decided at the edge (a bearer token, an AMQP
//! user or header); from there on it is this value.

/// Whether a tenant name is usable (also as an AMQP routing-key word).
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The caller's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

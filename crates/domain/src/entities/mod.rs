//! sea-orm entities. Private to the domain crate: nothing outside it reads a table directly,
//! every read goes through a tenant-scoped service function.

pub mod audit_event;
pub mod auth_challenge;
pub mod auth_throttle;
pub mod breach;
pub mod breach_tenant;
pub mod breach_update;
pub mod company;
pub mod consent;
pub mod contact;
pub mod dsr_request;
pub mod email_outbox;
pub mod erasure_ledger;
pub mod event;
pub mod gdpr_setting;
pub mod idempotency_key;
pub mod import_job;
pub mod integration_client;
pub mod job_run;
pub mod order;
pub mod order_line;
pub mod password_credential;
pub mod purpose;
pub mod refresh_token;
pub mod retention_policy;
pub mod session;
pub mod sso_connection;
pub mod sub_processor;
pub mod sub_processor_change;
pub mod suppression;
pub mod tenant;
pub mod user;
pub mod user_identity;
pub mod webauthn_credential;
pub mod webhook_delivery;
pub mod webhook_endpoint;

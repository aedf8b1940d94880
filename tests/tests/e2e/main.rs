//! End-to-end tests: a real server on port 0, real SQLite and PostgreSQL databases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod breaches;
mod bulk;
mod clients;
mod contract;
mod crash;
mod crm;
mod errors;
mod events;
mod gdpr;
mod isolation;
mod limits;
mod logs;
mod matrix;
mod nodes;
mod pool;
mod privacy;
mod quickstart;
mod schema;
mod sso;
mod subprocessors;
mod webauthn;

//! HTTP API of the GDPR-first CRM: actix-web app, authentication, problem+json errors and the
//! OpenAPI document. The app is a library: [`startup::Application::build`] binds its own
//! listener, so tests run it on port 0.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod input;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod outbound;
pub mod problem;
pub mod routes;
pub mod startup;
pub mod state;
mod timestamp;
pub mod worker;

pub use startup::{Application, openapi_spec};

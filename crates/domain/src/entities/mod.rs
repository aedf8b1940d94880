//! sea-orm entities. Private to the domain crate: nothing outside it reads a table directly,
//! every read goes through a tenant-scoped service function.

pub mod auth_throttle;
pub mod company;
pub mod contact;
pub mod order;
pub mod order_line;
pub mod password_credential;
pub mod refresh_token;
pub mod session;
pub mod tenant;
pub mod user;

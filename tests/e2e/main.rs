//! The one integration-test binary (one link instead of many): the real server on port 0
//! driven over HTTP.

mod chat;
mod common;
mod errors;
mod files;
mod fine_tune;
mod lifecycle;
mod openapi;
mod startup;

//! The client-facing server of an ostrakon member.
//!
//! etcd's gRPC API and the HTTP endpoints share the client port, as in etcd. Requests are
//! validated here, once, before anything is proposed ([`validate`]); every failure is
//! mapped to etcd's gRPC status code and message in one place ([`errors`]).

// tonic::Status is large, and it is what every gRPC handler returns.
#![allow(clippy::result_large_err)]

mod auth;
mod cluster;
mod common;
mod dashboard;
mod election;
pub mod errors;
mod etcd_http;
mod gateway;
mod grpc_calls;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod observe;
mod oracle;
mod planted;
mod queue;
mod ranges;
mod routed;
mod run;
pub mod validate;
mod watch;
mod watch_merge;

pub use run::{run, ServerConfig, ServerError};

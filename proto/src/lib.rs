//! Fallow's wire protocol: the generated protobuf messages and tonic services.
//!
//! # Layout
//! - `proto/fallow.proto`: the one schema, documented there.
//! - [`v1`]: the generated code.
//!
//! Nothing outside this crate and one boundary module per crate (`protocol::wire`,
//! `coordinator::service`, `worker::rpc`) may name these types: the rest of the code works on
//! validated domain types.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fallow.v1");
}

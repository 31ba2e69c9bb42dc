//! Fallow's wire protocol: the generated protobuf messages and tonic services.
//!
//! # Layout
//! - `proto/fallow.proto`: the one schema, documented there.
//! - [`v1`]: the generated code.
//! - [`wire`]: every conversion between these messages and `protocol`'s domain types.
//!
//! Protobuf stops here: `protocol` (and so `sandbox`) knows nothing of it. Nothing outside
//! this crate and one boundary module per crate (`coordinator::service`, `worker::rpc`) may
//! name these types: the rest of the code works on validated domain types.

pub mod wire;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fallow.v1");
}

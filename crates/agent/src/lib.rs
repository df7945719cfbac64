//! The gitvm agent: PID 1 inside every sandbox, serving the agent protocol described in
//! [`gitvm_proto::agent`]; and the host-side [`client`] of that protocol.

pub mod client;
pub mod handshake;
pub mod server;

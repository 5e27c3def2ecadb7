//! The Macula mesh plane (plan §4.4, §4.9.5): a nats-server on every node,
//! configured from its roles; the realm's CA and node certificates; joining
//! a realm with a one-time token; and what `maculaos mesh` shows and sends.

pub mod client;
pub mod conf;
pub mod join;
pub mod pki;
pub mod state;
pub mod status;

//! The first-boot pairing wizard: what a new node shows on its console (a
//! pairing code and a QR code of the wizard's address) and the small web
//! server an operator pairs it through (hostname, SSH keys, mesh roles,
//! realm, bootstrap peers, k3s), turning a valid request into the node's
//! configuration.
//!
//! - [`code`]: the per-boot pairing code and how typed answers are compared;
//! - [`qr`]: the QR code as text for a tty or serial console, and back;
//! - [`form`]: the pairing request, its checks, and the configuration
//!   fragment it gives;
//! - [`server`]: the HTTP routes, the rate limiter, and the serving loop.
//!
//! Starting the wizard (systemd, mDNS) and writing what a pairing gives is
//! the caller's: [`server::serve`] hands each valid pairing to its
//! `on_pair`.

pub mod code;
pub mod form;
pub mod qr;
pub mod server;

pub use code::PairingCode;
pub use form::{parse_form, validate, FieldErrors, PairRequest, Pairing};
pub use qr::{qr_modules_from_text, qr_text};
pub use server::{serve, NodeFacts, PairOutcome, RateLimiter, Response, Wizard};

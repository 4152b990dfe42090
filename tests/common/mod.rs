//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod interop;
pub mod net;
pub mod prometheus;
pub mod quic_flood;
pub mod signal;
pub mod suite;
pub mod vectors;

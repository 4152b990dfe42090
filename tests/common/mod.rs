//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod net;
pub mod suite;
pub mod vectors;

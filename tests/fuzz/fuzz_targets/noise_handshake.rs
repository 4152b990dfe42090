//! Secure-channel handshake messages from a peer: any bytes, as message 1
//! to a listener or message 2 to a dialler, then as the messages after,
//! must be refused with an error or accepted, never panic.
#![no_main]

use babble_net_core::identity::NodeKey;
use babble_net_core::secure::handshake::{Acceptance, Handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = NodeKey::from_hex(&"11".repeat(32)).expect("a valid scalar");
    let messages: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let mut listener = Handshake::respond(&key, Acceptance::AnyKey).expect("starts");
    for message in &messages {
        if listener.receive(message).is_err() || listener.is_finished() {
            break;
        }
    }
    let (mut dialler, _) = Handshake::initiate(&key, key.public()).expect("starts");
    for message in &messages {
        if dialler.receive(message).is_err() || dialler.is_finished() {
            break;
        }
    }
});

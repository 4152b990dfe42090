//! WAMP messages from a signaling router: any text must parse or fail with
//! an error, and whatever parses, fed to a signaling client with a session
//! open, must never panic it.
#![no_main]

use babble_net_core::signaling::wamp::Message;
use babble_net_core::signaling::{SignalClient, SignalSettings};
use libfuzzer_sys::fuzz_target;
use serde_json::Map;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    let mut client = SignalClient::new(SignalSettings::new("ws://router", "main", "me"), now);
    let (reply, _registered) = tokio::sync::oneshot::channel();
    client.listen(reply, now);
    client.connected(now);
    client.received(
        Message::Welcome {
            session: 1,
            details: Map::new(),
        },
        now,
    );
    // One message per line, so a run can take the client through several.
    for line in text.lines() {
        if let Ok(message) = Message::parse(line) {
            let _ = message.to_json();
            client.received(message, now);
        }
        while client.poll_action().is_some() {}
    }
    client.tick(now);
});

//! SDP offers and answers as they arrive through signaling: JSON holding
//! SDP text, parsed as the WebRTC layer does before applying it. Any input
//! must parse or fail with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

fuzz_target!(|data: &[u8]| {
    if let Ok(description) = serde_json::from_slice::<RTCSessionDescription>(data) {
        let _ = description.unmarshal();
    }
});

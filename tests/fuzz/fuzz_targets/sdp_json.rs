//! SDP offers and answers as they arrive through signaling: JSON holding
//! SDP text (`{"type": ..., "sdp": ...}`), then the SDP itself, parsed
//! with the same parser the WebRTC stack applies it with. Any input must
//! parse or fail with an error, never panic.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use rtc_sdp::SessionDescription;

#[derive(serde::Deserialize)]
struct SdpJson {
    #[serde(rename = "type")]
    _kind: String,
    sdp: String,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = serde_json::from_slice::<SdpJson>(data) {
        let _ = SessionDescription::unmarshal(&mut Cursor::new(json.sdp.as_bytes()));
    }
});

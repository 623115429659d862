//! Parsing and checking one browser frame before a session acts on it: the size limit,
//! JSON, the frame type, the fields, and what can be judged without state (a send's
//! `client_id` and text, a `since` past any seq). Pure, so the fuzzer drives it as it is
//! (`fuzz/`, docs/RELIABILITY.md "Fuzzing"); every refusal is a documented error code
//! (docs/PROTOCOL.md "Error codes").

use super::config::Limits;
use crate::protocol::{ClientFrame, Seq};

/// The highest seq a browser may name: JavaScript numbers are exact up to 2^53 − 1, and no
/// room gets near it. A `since` above it would make `last + 1` overflow and mute the
/// subscription, so it is refused.
pub const MAX_SEQ: Seq = (1 << 53) - 1;

/// The frame types a browser may send (docs/PROTOCOL.md, "Browser → node").
const KNOWN_TYPES: [&str; 6] = ["hello", "subscribe", "unsubscribe", "send", "typing", "history"];

/// Why a frame is refused: a stable code, a message for humans, and what it is about
/// (the `client_id` of a send, the room of a subscribe; none for the frame itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
    pub reference: Option<String>,
}

impl Refused {
    fn new(code: &'static str, message: impl Into<String>, reference: Option<String>) -> Self {
        Self { code, message: message.into(), reference }
    }
}

/// Parses one text frame and checks its fields; a frame that passes can be handled.
pub fn parse(raw: &str, limits: &Limits) -> Result<ClientFrame, Refused> {
    if raw.len() > limits.max_frame_bytes {
        return Err(Refused::new("frame_too_large", "the frame exceeds the size limit", None));
    }
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| Refused::new("invalid_json", e.to_string(), None))?;
    let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or_default();
    if !KNOWN_TYPES.contains(&kind) {
        return Err(Refused::new("unknown_type", format!("unknown frame type {kind:?}"), None));
    }
    let frame: ClientFrame =
        serde_json::from_value(value).map_err(|e| Refused::new("bad_frame", e.to_string(), None))?;
    check(&frame, limits)?;
    Ok(frame)
}

/// The checks a well-formed frame must still pass.
fn check(frame: &ClientFrame, limits: &Limits) -> Result<(), Refused> {
    match frame {
        ClientFrame::Subscribe { room, since: Some(since) } if *since > MAX_SEQ => {
            Err(Refused::new("bad_frame", format!("since must be at most {MAX_SEQ}"), Some(room.to_string())))
        }
        ClientFrame::Send { client_id, text, .. } => {
            let reference = Some(client_id.clone());
            if client_id.is_empty() || client_id.len() > 128 {
                Err(Refused::new("bad_frame", "client_id must be 1 to 128 bytes", reference))
            } else if text.trim().is_empty() {
                Err(Refused::new("bad_frame", "the message is empty", reference))
            } else if text.chars().count() > limits.max_text_chars {
                let message = format!("messages are at most {} characters", limits.max_text_chars);
                Err(Refused::new("text_too_long", message, reference))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(raw: &str) -> Result<(), &'static str> {
        parse(raw, &Limits::default()).map(drop).map_err(|refused| refused.code)
    }

    #[test]
    fn each_refusal_has_its_documented_code() {
        let too_big = format!(r#"{{"type":"hello","token":"{}"}}"#, "x".repeat(20_000));
        let long_text = format!(r#"{{"type":"send","room":1,"client_id":"c","text":"{}"}}"#, "é".repeat(4_001));
        for (raw, expected) in [
            (too_big.as_str(), Err("frame_too_large")),
            ("{", Err("invalid_json")),
            (r#"{"type":"shout"}"#, Err("unknown_type")),
            (r#"{"room":1}"#, Err("unknown_type")),
            (r#"{"type":"subscribe","room":-1}"#, Err("bad_frame")),
            (r#"{"type":"subscribe","room":1,"since":"7"}"#, Err("bad_frame")),
            (r#"{"type":"subscribe","room":1,"since":18446744073709551615}"#, Err("bad_frame")),
            (r#"{"type":"subscribe","room":1,"since":9007199254740991}"#, Ok(())),
            (r#"{"type":"history","room":1,"limit":4294967296}"#, Err("bad_frame")),
            (r#"{"type":"history","room":1,"before":0,"limit":0}"#, Ok(())),
            (r#"{"type":"send","room":1,"client_id":"","text":"hi"}"#, Err("bad_frame")),
            (r#"{"type":"send","room":1,"client_id":"c","text":"  "}"#, Err("bad_frame")),
            (long_text.as_str(), Err("text_too_long")),
            (r#"{"type":"send","room":1,"client_id":"c","text":"hi","extra":1}"#, Err("bad_frame")),
        ] {
            assert_eq!(code(raw), expected, "{raw:.80}");
        }
    }
}

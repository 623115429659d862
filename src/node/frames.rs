//! Parsing and checking one browser frame before a session acts on it: the size limit,
//! JSON, the frame type, the fields, and what can be judged without state (a send's
//! `client_id` and text, a `since` past any seq). Pure, so the fuzzer drives it as it is
//! (`fuzz/`, docs/RELIABILITY.md "Fuzzing"); every refusal is a documented error code
//! (docs/PROTOCOL.md "Error codes").

use super::config::Limits;
use crate::protocol::{Action, ClientFrame, Seq, REACTIONS};

/// The highest seq a browser may name: JavaScript numbers are exact up to 2^53 − 1, and no
/// room gets near it. A `since` above it would make `last + 1` overflow and mute the
/// subscription, so it is refused.
pub const MAX_SEQ: Seq = (1 << 53) - 1;

/// The frame types a browser may send (docs/PROTOCOL.md, "Browser → node").
const KNOWN_TYPES: [&str; 11] =
    ["hello", "subscribe", "unsubscribe", "send", "typing", "history", "edit", "delete", "react", "thread", "mentions"];

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
        ClientFrame::Subscribe { room, since: Some(since) } => seq_in_range("since", *since, Some(room.to_string())),
        ClientFrame::Send { client_id, text, reply_to, .. } => {
            check_change(client_id, Change::Message { text, reply_to: *reply_to }, limits)
        }
        ClientFrame::Edit { client_id, target, text, .. } => {
            check_change(client_id, Change::Edit { target: *target, text }, limits)
        }
        ClientFrame::Delete { client_id, target, .. } => {
            check_change(client_id, Change::Delete { target: *target }, limits)
        }
        ClientFrame::React { client_id, target, emoji, .. } => {
            check_change(client_id, Change::React { target: *target, emoji }, limits)
        }
        ClientFrame::Thread { room, root } => seq_in_range("root", *root, Some(room.to_string())),
        ClientFrame::Mentions { room, after } => seq_in_range("after", *after, Some(room.to_string())),
        _ => Ok(()),
    }
}

/// An [`Action`] borrowed, so a browser frame is checked without copying its text.
pub enum Change<'a> {
    Message { text: &'a str, reply_to: Option<Seq> },
    Edit { target: Seq, text: &'a str },
    Delete { target: Seq },
    React { target: Seq, emoji: &'a str },
    System { text: &'a str },
}

impl<'a> From<&'a Action> for Change<'a> {
    fn from(action: &'a Action) -> Self {
        match action {
            Action::Message { text, reply_to } => Self::Message { text, reply_to: *reply_to },
            Action::Edit { target, text } => Self::Edit { target: *target, text },
            Action::Delete { target } => Self::Delete { target: *target },
            Action::React { target, emoji } => Self::React { target: *target, emoji },
            Action::System { text } => Self::System { text },
        }
    }
}

/// The checks of a change to a room's log, from a browser or the REST API: the
/// `client_id`, the text, the seqs it names, the reaction.
pub fn check_change(client_id: &str, change: Change<'_>, limits: &Limits) -> Result<(), Refused> {
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(Refused::new("bad_frame", "client_id must be 1 to 128 bytes", Some(client_id.to_string())));
    }
    let reference = || Some(client_id.to_string());
    match change {
        Change::Message { text, reply_to } => {
            check_text(text, limits, client_id)?;
            reply_to.map_or(Ok(()), |parent| seq_in_range("reply_to", parent, reference()))
        }
        Change::Edit { target, text } => {
            seq_in_range("target", target, reference())?;
            check_text(text, limits, client_id)
        }
        Change::Delete { target } => seq_in_range("target", target, reference()),
        Change::React { target, emoji } => {
            seq_in_range("target", target, reference())?;
            if REACTIONS.contains(&emoji) {
                Ok(())
            } else {
                let message = format!("reactions are one of {}", REACTIONS.join(" "));
                Err(Refused::new("bad_frame", message, reference()))
            }
        }
        Change::System { text } => check_text(text, limits, client_id),
    }
}

/// A seq a browser names: at most [`MAX_SEQ`].
fn seq_in_range(field: &str, seq: Seq, reference: Option<String>) -> Result<(), Refused> {
    if seq > MAX_SEQ {
        return Err(Refused::new("bad_frame", format!("{field} must be at most {MAX_SEQ}"), reference));
    }
    Ok(())
}

/// A message's or an edit's text: not blank, at most `limits.max_text_chars`.
fn check_text(text: &str, limits: &Limits, client_id: &str) -> Result<(), Refused> {
    let reference = Some(client_id.to_string());
    if text.trim().is_empty() {
        Err(Refused::new("bad_frame", "the message is empty", reference))
    } else if text.chars().count() > limits.max_text_chars {
        let message = format!("messages are at most {} characters", limits.max_text_chars);
        Err(Refused::new("text_too_long", message, reference))
    } else {
        Ok(())
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
            (r#"{"type":"send","room":1,"client_id":"c","text":"hi","reply_to":3}"#, Ok(())),
            (r#"{"type":"send","room":1,"client_id":"c","text":"hi","reply_to":-3}"#, Err("bad_frame")),
            (r#"{"type":"edit","room":1,"client_id":"c","target":3,"text":"fixed"}"#, Ok(())),
            (r#"{"type":"edit","room":1,"client_id":"c","target":3,"text":" "}"#, Err("bad_frame")),
            (r#"{"type":"edit","room":1,"client_id":"c","text":"fixed"}"#, Err("bad_frame")),
            (r#"{"type":"delete","room":1,"client_id":"c","target":3}"#, Ok(())),
            (r#"{"type":"delete","room":1,"client_id":"","target":3}"#, Err("bad_frame")),
            (r#"{"type":"delete","room":1,"client_id":"c","target":9007199254740992}"#, Err("bad_frame")),
            (r#"{"type":"react","room":1,"client_id":"c","target":3,"emoji":"👍"}"#, Ok(())),
            (r#"{"type":"react","room":1,"client_id":"c","target":3,"emoji":"<b>"}"#, Err("bad_frame")),
            (r#"{"type":"thread","room":1,"root":3}"#, Ok(())),
            (r#"{"type":"mentions","room":1}"#, Ok(())),
            (r#"{"type":"mentions","room":1,"after":"x"}"#, Err("bad_frame")),
        ] {
            assert_eq!(code(raw), expected, "{raw:.80}");
        }
    }
}

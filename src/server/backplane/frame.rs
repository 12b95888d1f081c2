//! What travels on the backplane's channel: one chat message and the task it came from, as a
//! small JSON object (`{"o":"<origin>","t":"<text>"}`), so that any Redis client can read it.

use serde::{Deserialize, Serialize};

/// A chat message as published on the channel. The text is the client's, without
/// [`CHAT_PREFIX`](crate::server::CHAT_PREFIX): each task adds it when it relays the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatFrame {
    /// The id of the task whose client sent it (its own clients got it from the local room).
    #[serde(rename = "o")]
    pub origin: String,
    /// The text.
    #[serde(rename = "t")]
    pub text: String,
}

/// A payload on the channel that is not a [`ChatFrame`] (another program publishing there).
#[derive(Debug, thiserror::Error)]
#[error("not a chat frame: {0}")]
pub struct FrameError(#[from] serde_json::Error);

impl ChatFrame {
    /// The frame's bytes.
    pub fn encode(origin: &str, text: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            o: &'a str,
            t: &'a str,
        }
        // Serializing two strings cannot fail.
        serde_json::to_vec(&Borrowed { o: origin, t: text }).unwrap_or_default()
    }

    /// Reads a frame from a payload.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_any_text() {
        for text in [
            "hello",
            "",
            "quote \" and \\ and\nnewline",
            "ünïcødé 🎲",
            "{\"o\":\"x\"}",
        ] {
            let bytes = ChatFrame::encode("task-1", text);
            let frame = ChatFrame::decode(&bytes).unwrap();
            assert_eq!(frame.origin, "task-1");
            assert_eq!(frame.text, text);
        }
    }

    #[test]
    fn foreign_payloads_are_errors() {
        for bad in [&b"hello"[..], b"{}", b"{\"o\":1,\"t\":\"x\"}", b"\xff"] {
            assert!(ChatFrame::decode(bad).is_err());
        }
    }
}

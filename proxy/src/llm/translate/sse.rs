//! Server-sent events as the translators see them: complete events cut from a byte stream, and
//! events written back in the caller's style.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

/// The most bytes one event may take while it is incomplete: a stream that never ends an event
/// is not an event stream.
pub const MAX_EVENT: usize = 8 * 1024 * 1024;

/// One event of a provider's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An event whose data is JSON; `name` is its `event:` field (Anthropic names every event,
    /// OpenAI and Gemini none).
    Json { name: Option<String>, data: Value },
    /// An event written as its JSON text: the common event of a stream (a text delta) built
    /// without a document (see `anthropic`).
    Raw {
        name: Option<&'static str>,
        data: String,
    },
    /// OpenAI's end of stream, `data: [DONE]`.
    Done,
}

impl Event {
    /// A JSON event without a name.
    pub fn data(data: Value) -> Self {
        Self::Json { name: None, data }
    }

    /// A JSON event named by its own `type` member (Anthropic's style).
    pub fn typed(data: Value) -> Self {
        let name = data.get("type").and_then(Value::as_str).map(str::to_owned);
        Self::Json { name, data }
    }

    /// The event as a document (a raw one parsed), for a stage that reads it.
    pub fn parsed(self) -> Self {
        match self {
            Self::Raw { name, data } => match serde_json::from_str(&data) {
                Ok(doc) => Self::Json {
                    name: name.map(str::to_owned),
                    data: doc,
                },
                Err(_) => Self::Raw { name, data },
            },
            other => other,
        }
    }
}

/// Cuts complete events from the bytes of a stream.
#[derive(Debug, Default)]
pub struct Reader {
    pending: BytesMut,
    /// How much of `pending` is known to hold no event end: scanning resumes there (a long
    /// event arriving in many pieces is scanned once, not once per piece).
    scanned: usize,
}

/// A stream whose event grew past [`MAX_EVENT`] without ending.
#[derive(Debug, thiserror::Error)]
#[error("an event of the backend's stream is longer than {MAX_EVENT} bytes")]
pub struct EventTooLong;

impl Reader {
    /// Adds `chunk` and returns the events it completed. Events whose data is neither JSON nor
    /// `[DONE]` (comments, keep-alives) are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, EventTooLong> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        // An end (`\n\n`, `\n\r\n`) may straddle the previous piece's last bytes.
        let mut from = self.scanned.saturating_sub(2);
        while let Some(end) = event_end(&self.pending[from..]).map(|e| e + from) {
            let raw = self.pending.split_to(end);
            events.extend(parse(&raw));
            from = 0;
        }
        self.scanned = self.pending.len();
        if self.pending.len() > MAX_EVENT {
            return Err(EventTooLong);
        }
        Ok(events)
    }

    /// The last event, when the stream ended without the blank line after it.
    pub fn finish(&mut self) -> Option<Event> {
        let raw = std::mem::take(&mut self.pending);
        self.scanned = 0;
        parse(&raw)
    }
}

/// The end (past the blank line) of the first complete event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// One event's fields (`event:` and the `data:` lines joined), as an [`Event`].
fn parse(raw: &[u8]) -> Option<Event> {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) | None => continue, // A comment, or a field without a value.
            Some(i) => (&line[..i], &line[i + 1..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => name = std::str::from_utf8(value).ok().map(str::to_owned),
            b"data" => {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            _ => {}
        }
    }
    if !has_data {
        return None;
    }
    if data.trim_ascii() == b"[DONE]" {
        return Some(Event::Done);
    }
    let data = serde_json::from_slice(&data).ok()?;
    Some(Event::Json { name, data })
}

/// Writes `event` as SSE text.
pub fn write(out: &mut BytesMut, event: &Event) {
    match event {
        Event::Done => out.put_slice(b"data: [DONE]\n\n"),
        Event::Raw { name, data } => {
            if let Some(name) = name {
                out.put_slice(b"event: ");
                out.put_slice(name.as_bytes());
                out.put_slice(b"\n");
            }
            out.put_slice(b"data: ");
            out.put_slice(data.as_bytes());
            out.put_slice(b"\n\n");
        }
        Event::Json { name, data } => {
            if let Some(name) = name {
                out.put_slice(b"event: ");
                out.put_slice(name.as_bytes());
                out.put_slice(b"\n");
            }
            out.put_slice(b"data: ");
            // Serializing a `Value` cannot fail.
            if let Ok(json) = serde_json::to_vec(data) {
                out.put_slice(&json);
            }
            out.put_slice(b"\n\n");
        }
    }
}

/// `events` as SSE text.
pub fn encode(events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        write(&mut out, event);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_cut_wherever_the_bytes_split() {
        let text = b"event: message_start\ndata: {\"a\":1}\n\n: ping\n\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        let whole = Reader::default().push(text).expect("short events");
        assert_eq!(
            whole,
            vec![
                Event::Json {
                    name: Some("message_start".into()),
                    data: json!({"a": 1})
                },
                Event::data(json!({"b": 2})),
                Event::Done
            ]
        );
        for cut in 0..text.len() {
            let mut reader = Reader::default();
            let mut events = reader.push(&text[..cut]).expect("short");
            events.extend(reader.push(&text[cut..]).expect("short"));
            assert_eq!(events, whole, "cut at {cut}");
        }
        let mut reader = Reader::default();
        assert!(reader.push(b"data: {\"x\":1}").expect("short").is_empty());
        assert_eq!(reader.finish(), Some(Event::data(json!({"x": 1}))));
        assert!(Reader::default().push(&vec![b'a'; MAX_EVENT + 1]).is_err());
    }

    #[test]
    fn events_are_written_in_each_style() {
        let text = encode(&[
            Event::typed(json!({"type": "ping"})),
            Event::data(json!({"x": 1})),
            Event::Done,
        ]);
        assert_eq!(
            &text[..],
            b"event: ping\ndata: {\"type\":\"ping\"}\n\ndata: {\"x\":1}\n\ndata: [DONE]\n\n"
        );
    }
}

//! Picks named members out of a JSON document as it streams by, in constant memory, so that a
//! response of any size is metered (a body too large to keep went unmetered before: `logprobs`
//! could inflate one past the limit and make the call free).
//!
//! The members looked at are those of the document's top-level object, or of each object in a
//! top-level array (Gemini's `streamGenerateContent` without `alt=sse` streams an array of
//! responses). Strings and escapes are tracked so that braces inside text do not count. A member's
//! value is kept only if it is one of the wanted names and smaller than [`MAX_VALUE`].

/// Largest member value kept (a `usage` object is a few hundred bytes).
pub const MAX_VALUE: usize = 64 * 1024;
/// Longest member name compared (longer ones are not wanted).
const MAX_NAME: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Where a member name may start (after `{` or `,` at member level).
    Name,
    /// Inside a member name.
    InName,
    /// After a member name, before `:`.
    Colon,
    /// The member's value (possibly nested), until `,` or the closing brace at member level.
    Value,
}

/// The scanner's state between chunks.
#[derive(Debug)]
pub struct MemberScanner {
    wanted: &'static [&'static str],
    /// Nesting depth of objects and arrays.
    depth: u32,
    /// Depth at which members are read: 1 for an object at the top, 2 inside a top-level array.
    member_depth: Option<u32>,
    in_string: bool,
    escaped: bool,
    expect: Expect,
    name: Vec<u8>,
    /// The value of a wanted member being captured (`None`: not wanted, or too large).
    value: Option<Vec<u8>>,
    /// The top-level value has closed: the document is whole.
    closed: bool,
}

impl MemberScanner {
    /// A scanner keeping the members named in `wanted`.
    pub fn new(wanted: &'static [&'static str]) -> Self {
        Self {
            wanted,
            depth: 0,
            member_depth: None,
            in_string: false,
            escaped: false,
            expect: Expect::Name,
            name: Vec::new(),
            value: None,
            closed: false,
        }
    }

    /// Whether the document's top-level object or array has closed (a body cut short has not).
    pub fn complete(&self) -> bool {
        self.closed
    }

    /// Reads `chunk`; each wanted member completed in it is passed to `found` (name, value bytes).
    pub fn feed(&mut self, chunk: &[u8], found: &mut impl FnMut(&str, &[u8])) {
        for &b in chunk {
            self.byte(b, found);
        }
    }

    fn at_member_level(&self) -> bool {
        self.member_depth == Some(self.depth)
    }

    fn byte(&mut self, b: u8, found: &mut impl FnMut(&str, &[u8])) {
        if self.in_string {
            self.keep(b);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.expect == Expect::InName {
                    self.expect = Expect::Colon;
                }
            } else if self.expect == Expect::InName && self.name.len() < MAX_NAME + 1 {
                self.name.push(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.at_member_level() && self.expect == Expect::Name {
                    self.expect = Expect::InName;
                    self.name.clear();
                } else {
                    self.keep(b);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.member_depth = Some(if b == b'{' { 1 } else { 2 });
                }
                self.keep(b);
                self.depth += 1;
                if self.at_member_level() && b == b'{' {
                    self.expect = Expect::Name;
                }
            }
            b'}' | b']' => {
                if self.at_member_level() {
                    self.end_value(found);
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 && self.member_depth.is_some() {
                    self.closed = true;
                }
                self.keep(b);
            }
            b',' if self.at_member_level() => {
                self.end_value(found);
                self.expect = Expect::Name;
            }
            b':' if self.at_member_level() && self.expect == Expect::Colon => {
                self.expect = Expect::Value;
                let wanted =
                    std::str::from_utf8(&self.name).is_ok_and(|n| self.wanted.contains(&n));
                self.value = wanted.then(Vec::new);
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => self.keep(b),
        }
    }

    /// Keeps a byte of a wanted value (dropping the value when it grows too large).
    fn keep(&mut self, b: u8) {
        if self.expect != Expect::Value {
            return;
        }
        if let Some(value) = &mut self.value {
            if value.len() < MAX_VALUE {
                value.push(b);
            } else {
                self.value = None;
            }
        }
    }

    fn end_value(&mut self, found: &mut impl FnMut(&str, &[u8])) {
        if self.expect == Expect::Value
            && let Some(value) = self.value.take()
            && let Ok(name) = std::str::from_utf8(&self.name)
        {
            found(name, &value);
        }
        self.value = None;
        self.expect = Expect::Name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(doc: &str, chunk: usize) -> Vec<(String, serde_json::Value)> {
        let mut scanner = MemberScanner::new(&["usage", "model"]);
        let mut out = Vec::new();
        for part in doc.as_bytes().chunks(chunk) {
            scanner.feed(part, &mut |name, value| {
                out.push((
                    name.to_owned(),
                    serde_json::from_slice(value).expect("a JSON value"),
                ))
            });
        }
        out
    }

    #[test]
    fn top_level_members_are_found_however_the_body_is_split() {
        let doc = r#"{"id":"x","model":"gpt-4o","choices":[{"message":{"content":"a \"usage\": {} } ] ,"},"usage":{"nested":1}}],
            "usage" : {"prompt_tokens":3,"completion_tokens":4,"details":{"cached_tokens":[1,2]}}}"#;
        for chunk in [1, 2, 7, 4096] {
            let found = scan(doc, chunk);
            assert_eq!(
                found,
                vec![
                    ("model".to_owned(), serde_json::json!("gpt-4o")),
                    (
                        "usage".to_owned(),
                        serde_json::json!({"prompt_tokens":3,"completion_tokens":4,"details":{"cached_tokens":[1,2]}})
                    ),
                ],
                "split every {chunk} bytes"
            );
        }
    }

    #[test]
    fn each_object_of_a_top_level_array_is_read() {
        let doc = r#"[{"usage":{"n":1},"x":[{"usage":9}]},
            {"model":"gemini","usage":{"n":2}}]"#;
        let found = scan(doc, 3);
        let mut whole = MemberScanner::new(&[]);
        whole.feed(&doc.as_bytes()[..doc.len() - 1], &mut |_, _| {});
        assert!(!whole.complete(), "the closing bracket has not come");
        whole.feed(b"]", &mut |_, _| {});
        assert!(whole.complete());
        let names: Vec<_> = found.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            names,
            ["usage={\"n\":1}", "model=\"gemini\"", "usage={\"n\":2}"]
        );
    }

    #[test]
    fn a_body_of_many_megabytes_is_read_in_constant_memory() {
        let filler = "x".repeat(1024);
        let mut doc = String::from(r#"{"model":"m","choices":["#);
        for _ in 0..8 * 1024 {
            doc.push_str(&format!(r#"{{"logprobs":"{filler}"}},"#));
        }
        doc.push_str(r#"{}],"usage":{"prompt_tokens":1}}"#);
        let found = scan(&doc, 65536);
        assert_eq!(found.len(), 2, "model and usage after 8 MiB");
        assert_eq!(found[1].1["prompt_tokens"], 1);
    }

    #[test]
    fn a_value_too_large_to_be_usage_is_dropped() {
        let doc = format!(
            r#"{{"usage":"{}","model":"m"}}"#,
            "y".repeat(MAX_VALUE + 10)
        );
        let found = scan(&doc, 100);
        assert_eq!(found, vec![("model".to_owned(), serde_json::json!("m"))]);
    }
}

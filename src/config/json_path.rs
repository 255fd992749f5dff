//! The dotted key path (e.g. `routes[0].match.path`) at a byte offset of a JSON document: how a
//! serde error's position becomes the key a configuration error names. A small scanner over the
//! text, so that naming the key costs no second, path-tracking instantiation of every
//! deserializer.

/// One level of nesting: the key last read in an object, or the index reached in an array.
enum Level {
    Object(Option<String>),
    Array(usize),
}

/// The path of keys and indices enclosing `offset`, the position serde_json reports an error at
/// (the byte after what it has read). A key read just before `offset` is part of the path, so an
/// unknown key names itself. With `of_object` the error is about the object that closes just
/// before `offset` (a missing key) and that object's path is given. Past `offset` nothing is
/// read; an offset past the end is the end.
pub(super) fn path_at(json: &[u8], offset: usize, of_object: bool) -> String {
    let mut text = &json[..offset.min(json.len())];
    if of_object {
        if let Some(close) = text.iter().rposition(|b| !b.is_ascii_whitespace()) {
            if text[close] == b'}' {
                text = &text[..close];
            }
        }
    }
    let mut levels: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => levels.push(Level::Object(None)),
            b'[' => levels.push(Level::Array(0)),
            b'}' | b']' => {
                levels.pop();
            }
            b',' => {
                if let Some(Level::Array(n)) = levels.last_mut() {
                    *n += 1;
                }
            }
            b'"' => {
                let end = string_end(text, i + 1);
                // A string is a key when it opens an object entry: after `{` or `,` in an object.
                let opens_entry = matches!(
                    text[..i].iter().rev().find(|b| !b.is_ascii_whitespace()),
                    Some(b'{' | b',')
                );
                if let (true, Some(Level::Object(key))) = (opens_entry, levels.last_mut()) {
                    *key = Some(String::from_utf8_lossy(&text[i + 1..end]).into_owned());
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    if of_object {
        if let Some(Level::Object(key)) = levels.last_mut() {
            *key = None;
        }
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Level::Object(None) => {}
            Level::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path
}

/// The index of the quote closing a string whose text starts at `from` (or the end of `text`).
fn string_end(text: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// The text around `offset` as a refusal may quote it: up to 24 bytes before and 8 after, in
/// backticks, white space folded. Keys are shown as written; a string value, or a bare word that
/// is not `true`, `false`, `null` or a short number (an unquoted secret may be one), is shown
/// as `…`.
pub(super) fn near(json: &[u8], offset: usize) -> String {
    let offset = offset.min(json.len());
    let (from, to) = (offset.saturating_sub(24), (offset + 8).min(json.len()));
    let mut out: Vec<u8> = Vec::new();
    // What encloses the text read so far, and the last byte that was not white space: a string
    // is a key only where an object entry opens (after `{` or `,` inside an object) and a `:`
    // follows it; a string value followed by a stray `:` is still a value.
    let mut nesting: Vec<u8> = Vec::new();
    let mut last = 0u8;
    let mut i = 0;
    while i < to {
        let b = json[i];
        let opens_entry = nesting.last() == Some(&b'{') && matches!(last, b'{' | b',');
        let end = if b == b'"' {
            string_end(json, i + 1) + 1
        } else if b"{}[],:".contains(&b) || b.is_ascii_whitespace() {
            i + 1
        } else {
            let run = json[i..]
                .iter()
                .position(|c| b"{}[],:\"".contains(c) || c.is_ascii_whitespace());
            i + run.unwrap_or(json.len() - i)
        };
        if end > from {
            let token = &json[i..end.min(json.len())];
            let shown: &[u8] = if b == b'"' {
                let after = json.get(end..).unwrap_or_default();
                let is_key =
                    opens_entry && after.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b':');
                if is_key {
                    &json[i.max(from)..end.min(to)]
                } else {
                    "\"…\"".as_bytes()
                }
            } else if b.is_ascii_whitespace() {
                b" "
            } else if matches!(token, b"true" | b"false" | b"null")
                || token.len() <= 6
                    && token
                        .iter()
                        .all(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                || token.len() == 1
            {
                token
            } else {
                "…".as_bytes()
            };
            if !(shown == b" " && out.last() == Some(&b' ')) {
                out.extend_from_slice(shown);
            }
        }
        match b {
            b'{' | b'[' => nesting.push(b),
            b'}' | b']' => {
                nesting.pop();
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            last = b;
        }
        i = end;
    }
    format!("`{}`", String::from_utf8_lossy(&out).trim())
}

/// The byte offset of serde_json's 1-based `line` and `column` (columns count bytes).
pub(super) fn offset_of(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = match line.checked_sub(2) {
        None => 0,
        Some(newlines) => json
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(newlines)
            .map_or(json.len(), |(i, _)| i + 1),
    };
    line_start.saturating_add(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_marker(marked: &str) -> String {
        let offset = marked.find('|').unwrap();
        let json = marked.replace('|', "");
        path_at(json.as_bytes(), offset, false)
    }

    #[test]
    fn a_key_just_read_is_on_the_path() {
        assert_eq!(
            at_marker(r#"{"sts":{"cluster":"s","tmeout_ms"|:5}}"#),
            "sts.tmeout_ms"
        );
        assert_eq!(at_marker(r#"{"colour"|:"blue"}"#), "colour");
    }

    #[test]
    fn a_value_names_its_key_and_array_indices_count() {
        assert_eq!(
            at_marker(r#"{"routes":[{"match":{}},{"match":{"path":"/"|}}]}"#),
            "routes[1].match.path"
        );
        assert_eq!(
            at_marker(r#"{"exchange":{"audience":["a", 1|]}}"#),
            "exchange.audience[1]"
        );
    }

    #[test]
    fn closed_objects_and_string_values_are_left_behind() {
        assert_eq!(
            at_marker(r#"{"sts":{"a":"{[,\"}"},"cache":{"max_entries":-1|}}"#),
            "cache.max_entries"
        );
        assert_eq!(at_marker(r#"{"sts":{"a":"x"}|}"#), "sts");
        let missing = r#"{"sts":{"cluster":"s"}}"#;
        assert_eq!(path_at(missing.as_bytes(), 22, true), "sts");
        assert_eq!(path_at(missing.as_bytes(), 23, true), "");
        assert_eq!(at_marker(r#"{"a":"b", "c" :|1}"#), "c");
    }

    #[test]
    fn escaped_quotes_stay_inside_a_key() {
        assert_eq!(at_marker(r#"{"we\"ird"|:1}"#), r#"we\"ird"#);
    }

    #[test]
    fn nothing_read_is_the_document() {
        assert_eq!(at_marker("|not json"), "");
        assert_eq!(path_at(b"{\"a\":", 99, false), "a");
    }

    #[test]
    fn the_text_near_an_error_shows_keys_and_hides_values() {
        let json = br#"{"sts": {"client_secret": "s3cret",
           }}"#;
        let at = json.iter().rposition(|b| *b == b'}').unwrap_or(0) - 1;
        let shown = near(json, at);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.ends_with(r#"": "…", }}`"#), "{shown}");
        assert_eq!(near(b"[1,,]", 3), "`[1,,]`");
        let bare = near(br#"{"client_secret": hunter2}"#, 18);
        assert_eq!(bare, r#"`{"client_secret": …}`"#);
    }

    #[test]
    fn offsets_follow_lines_and_byte_columns() {
        let json = b"{\n  \"ab\": 1,\n  \"c\": 2\n}";
        assert_eq!(offset_of(json, 1, 1), 1);
        assert_eq!(offset_of(json, 2, 6), 8);
        assert_eq!(json[offset_of(json, 3, 2)], b'"');
    }
}

//! The signed member of a PCS answer, byte for byte: PCS signs the text of `tcbInfo` (or
//! `enclaveIdentity`) exactly as it sends it inside `{"tcbInfo": {...}, "signature": "..."}`, so
//! the collateral must carry that text, not a re-serialization.

use serde_json::Value;

/// The raw text of the top-level object member `key` of the JSON `body`, and the body's
/// `signature` string. The member must appear once and be an object.
pub(super) fn signed_member(body: &[u8], key: &str) -> Result<(String, String), String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let signature = value
        .get("signature")
        .and_then(Value::as_str)
        .ok_or("no \"signature\" string")?;
    if !value.get(key).is_some_and(Value::is_object) {
        return Err(format!("no {key:?} object"));
    }
    let raw = raw_member(text, key).ok_or_else(|| format!("{key:?} is not there exactly once"))?;
    Ok((raw.to_string(), signature.to_string()))
}

/// The text of the value of the top-level member `key` of the JSON object `text`, if it occurs
/// exactly once. `text` is valid JSON (checked by the caller).
fn raw_member<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let mut found = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i)?;
                let mut j = skip_ws(bytes, end);
                if depth == 1 && bytes.get(j) == Some(&b':') {
                    let name: String = serde_json::from_str(text.get(i..end)?).ok()?;
                    j = skip_ws(bytes, j + 1);
                    let value_end = value_end(bytes, j)?;
                    if name == key {
                        if found.is_some() {
                            return None;
                        }
                        found = Some(text.get(j..value_end)?);
                    }
                    i = value_end;
                } else {
                    i = end;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The index after the closing quote of the string starting at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index after the value starting at `start`.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']')
                && !bytes[i].is_ascii_whitespace()
            {
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_taken_byte_for_byte() {
        let body = br#"{ "signature" : "ab", "tcbInfo" : {"a":"}\"{","b":[1,{"c":2}]} , "x": 1 }"#;
        let (raw, signature) = signed_member(body, "tcbInfo").unwrap();
        assert_eq!(raw, r#"{"a":"}\"{","b":[1,{"c":2}]}"#);
        assert_eq!(signature, "ab");
    }

    #[test]
    fn nested_names_do_not_count_and_twice_is_refused() {
        let nested = br#"{"other":{"tcbInfo":{"z":1}},"tcbInfo":{"y":2},"signature":"cd"}"#;
        assert_eq!(signed_member(nested, "tcbInfo").unwrap().0, r#"{"y":2}"#);
        let twice = br#"{"tcbInfo":{"y":2},"tcbInfo":{"y":3},"signature":"cd"}"#;
        assert!(signed_member(twice, "tcbInfo").is_err());
        assert!(signed_member(br#"{"tcbInfo":{}}"#, "tcbInfo").is_err());
        assert!(signed_member(br#"{"tcbInfo":"x","signature":"s"}"#, "tcbInfo").is_err());
        assert!(signed_member(b"not json", "tcbInfo").is_err());
    }
}

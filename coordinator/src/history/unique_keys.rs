//! `check_unique_keys`: refuses a JSON document in which any object names a member twice.
//!
//! JSON (RFC 8259 §4) leaves duplicate names undefined, and parsers differ: serde_json's maps keep the
//! last value, Python's `json` too, other parsers the first or an error. An audit bundle with two
//! entries for one policy hash, or two `manifest` fields in a transition, could then mean one thing to
//! Concord's auditor and another to a third party's. PROTOCOL.md §10 makes duplicates an error; this
//! pass enforces it for the whole document before anything decoded from it is used (the audit runs it
//! beside serde's decoding, on another thread, and refuses on its verdict first). It must never accept
//! a document that serde_json would read differently from a parser that keeps the first value.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// `Ok` if no object in `bytes` (JSON) names a member twice; else the member and where it is (a path
/// such as `policies` or `transitions[1]`). Malformed JSON is an error too.
pub fn check_unique_keys(bytes: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Node { path: Path::Root }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
}

/// Where a value is, for the message. Built as a chain of borrowed steps and written out only for
/// an error: formatting a path for every member cost more than the parse (a bundle of 10,000
/// transitions has about 100,000 members).
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Member(&'p Path<'p>, &'p str),
    Element(&'p Path<'p>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Member(Path::Root, key) => f.write_str(key),
            Path::Member(parent, key) => write!(f, "{parent}.{key}"),
            Path::Element(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// One value of the document, at `path` (for the message).
struct Node<'p> {
    path: Path<'p>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name, borrowed from the document unless it has escapes (then decoded, so that `"\u0061"`
/// and `"a"` are the same name).
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// The names seen in one object: a short list searched in order (most objects have a few
/// members), a hash set past [`Seen::LIST`].
#[derive(Default)]
struct Seen<'de> {
    list: Vec<Cow<'de, str>>,
    set: HashSet<Cow<'de, str>>,
}

impl<'de> Seen<'de> {
    const LIST: usize = 16;

    /// False if `name` was seen before.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if self.list.len() < Self::LIST {
            if self.list.contains(&name) {
                return false;
            }
            self.list.push(name);
            return true;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.iter().cloned());
        }
        self.set.insert(name)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::default();
        while let Some(name) = map.next_key_seed(Name)? {
            if !seen.insert(name.clone()) {
                let place = match self.path {
                    Path::Root => "the top level".to_string(),
                    path => format!("`{path}`"),
                };
                let path = Path::Member(&self.path, &name);
                return Err(de::Error::custom(format!(
                    "`{path}` appears twice in {place}: a duplicate JSON member, which parsers read differently"
                )));
            }
            map.next_value_seed(Node {
                path: Path::Member(&self.path, &name),
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let path = Path::Element(&self.path, i);
            if seq.next_element_seed(Node { path })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_at_any_depth_and_named() {
        assert!(check_unique_keys(br#"{"a": [1, {"b": null}], "c": {"d": "x"}}"#).is_ok());
        let top = check_unique_keys(br#"{"a": 1, "a": 1}"#).unwrap_err();
        assert!(top.contains("`a` appears twice in the top level"), "{top}");
        let policies = check_unique_keys(br#"{"policies": {"ab": "x", "ab": "y"}}"#).unwrap_err();
        assert!(
            policies.contains("`policies.ab` appears twice in `policies`"),
            "{policies}"
        );
        let nested =
            check_unique_keys(br#"{"t": [{"i": 0}, {"i": 1, "m": "x", "m": "y"}]}"#).unwrap_err();
        assert!(nested.contains("in `t[1]`"), "{nested}");
        // Escapes do not hide a duplicate: "\u0061" is "a".
        assert!(check_unique_keys(br#"{"a": 1, "\u0061": 2}"#).is_err());
        // Malformed or trailing input is an error too.
        assert!(check_unique_keys(br#"{"a": 1"#).is_err());
        assert!(check_unique_keys(br#"{"a": 1} {}"#).is_err());
    }

    #[test]
    fn a_duplicate_among_many_members_is_found() {
        // Past the short list, in the hash set: the first name, and one after the switch.
        for dup in [0, 3, 40] {
            let mut doc: Vec<String> = (0..50).map(|i| format!("\"k{i}\": {i}")).collect();
            doc.push(format!("\"k{dup}\": 0"));
            let doc = format!("{{\"p\": {{{}}}}}", doc.join(", "));
            let err = check_unique_keys(doc.as_bytes()).unwrap_err();
            assert!(
                err.contains(&format!("`p.k{dup}` appears twice in `p`")),
                "{err}"
            );
        }
        let many: Vec<String> = (0..50).map(|i| format!("\"k{i}\": {i}")).collect();
        assert!(check_unique_keys(format!("{{{}}}", many.join(",")).as_bytes()).is_ok());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(check_unique_keys(deep.as_bytes()).is_err());
    }
}

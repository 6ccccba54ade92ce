//! Label and field selectors, parsed from the query string as the real server parses them.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::status::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(bad_label(input, "found ',', expected: identifier"));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { requirements })
    }

    /// True if the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does the object's `metadata.labels` satisfy every requirement?
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get =
            |key: &str| -> Option<&str> { labels.and_then(|l| l.get(key)).and_then(Value::as_str) };
        self.requirements.iter().all(|(key, op)| match op {
            LabelOp::Equals(v) => get(key) == Some(v.as_str()),
            LabelOp::NotEquals(v) => get(key) != Some(v.as_str()),
            LabelOp::In(set) => get(key).is_some_and(|l| set.contains(l)),
            LabelOp::NotIn(set) => !get(key).is_some_and(|l| set.contains(l)),
            LabelOp::Exists => get(key).is_some(),
            LabelOp::DoesNotExist => get(key).is_none(),
            LabelOp::GreaterThan(n) => get(key)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelOp::LessThan(n) => get(key)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

fn bad_label(input: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (selector \"{input}\")"
    ))
}

/// Splits on commas that are not inside `( ... )`.
fn split_top_level(input: &str) -> Result<Vec<&str>, ApiError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| bad_label(input, "unbalanced ')'"))?
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad_label(input, "unbalanced '('"));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(is_key_char) && key.len() <= 317
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63 && value.chars().all(is_value_char)
}

fn parse_requirement(part: &str) -> Result<(String, LabelOp), ApiError> {
    if let Some(rest) = part.strip_prefix('!') {
        let key = rest.trim();
        if !valid_key(key) {
            return Err(bad_label(part, "invalid label key"));
        }
        return Ok((key.to_string(), LabelOp::DoesNotExist));
    }
    let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = &part[..key_end];
    if !valid_key(key) {
        return Err(bad_label(part, "invalid label key"));
    }
    let rest = part[key_end..].trim_start();
    let op = if rest.is_empty() {
        LabelOp::Exists
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        LabelOp::Equals(single_value(part, v)?)
    } else if let Some(v) = rest.strip_prefix("!=") {
        LabelOp::NotEquals(single_value(part, v)?)
    } else if let Some(v) = rest.strip_prefix('>') {
        LabelOp::GreaterThan(integer_value(part, v)?)
    } else if let Some(v) = rest.strip_prefix('<') {
        LabelOp::LessThan(integer_value(part, v)?)
    } else if let Some(v) = rest.strip_prefix("notin") {
        LabelOp::NotIn(set_value(part, v)?)
    } else if let Some(v) = rest.strip_prefix("in") {
        LabelOp::In(set_value(part, v)?)
    } else {
        return Err(bad_label(
            part,
            "found unexpected token, expected: in, notin, =, ==, !=, gt, lt",
        ));
    };
    Ok((key.to_string(), op))
}

fn single_value(part: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if !valid_value(v) {
        return Err(bad_label(part, "invalid label value"));
    }
    Ok(v.to_string())
}

fn integer_value(part: &str, v: &str) -> Result<i64, ApiError> {
    v.trim().parse::<i64>().map_err(|_| {
        bad_label(
            part,
            "for 'Gt', 'Lt' operators, the value must be an integer",
        )
    })
}

fn set_value(part: &str, v: &str) -> Result<BTreeSet<String>, ApiError> {
    let v = v.trim();
    let inner = v
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| bad_label(part, "expected: '(' values ')'"))?;
    let mut set = BTreeSet::new();
    for value in inner.split(',') {
        let value = value.trim();
        if !valid_value(value) {
            return Err(bad_label(part, "invalid label value"));
        }
        set.insert(value.to_string());
    }
    Ok(set)
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter, accepting only the field paths in `supported`.
    pub fn parse(input: &str, supported: &[&str]) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (key, equal, value) = split_field_term(&term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{input}'; can't understand '{term}'"
                ))
            })?;
            let key = key.trim().to_string();
            if !supported.contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            terms.push((key, equal, unescape(value)));
        }
        Ok(FieldSelector { terms })
    }

    /// True if the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value of `metadata.name=` if the selector pins one name (for a GET-style watch).
    pub fn with_name(name: &str) -> Self {
        FieldSelector {
            terms: vec![("metadata.name".to_string(), true, name.to_string())],
        }
    }

    /// Adds the terms of `other`.
    pub fn and(mut self, other: FieldSelector) -> Self {
        self.terms.extend(other.terms);
        self
    }

    /// Does the object satisfy every term?
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, equal, value)| {
            let actual = field_value(object, path);
            (actual == *value) == *equal
        })
    }
}

/// The string form of a field, as the server's field-label conversion gives it.
fn field_value(object: &Value, path: &str) -> String {
    let pointer = format!("/{}", path.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => String::new(),
        // Boolean fields read as "false" when unset, as the server's defaulting makes them.
        None if matches!(path, "spec.hostNetwork" | "spec.unschedulable") => "false".to_string(),
        None => String::new(),
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            current.push('\\');
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if escaped {
        current.push('\\');
    }
    out.push(current);
    out
}

/// Splits `key op value` at the first unescaped operator.
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], false, &term[i + 2..]));
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], true, &term[i + 2..]));
            }
            b'=' => return Some((&term[..i], true, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&o));
        assert_eq!(m(""), Ok(true));
        assert_eq!(m("app=web"), Ok(true));
        assert_eq!(m("app==web,tier=front"), Ok(true));
        assert_eq!(m("app!=web"), Ok(false));
        assert_eq!(m("missing!=x"), Ok(true));
        assert_eq!(m("app in (web, db)"), Ok(true));
        assert_eq!(m("app notin (web,db)"), Ok(false));
        assert_eq!(m("missing notin (web)"), Ok(true));
        assert_eq!(m("app"), Ok(true));
        assert_eq!(m("!app"), Ok(false));
        assert_eq!(m("!missing"), Ok(true));
        assert_eq!(m("n>4,n<6"), Ok(true));
        assert_eq!(m("app in (web),tier notin (back)"), Ok(true));
        assert!(m("app in web").is_err());
        assert!(m("app=(x").is_err());
        assert!(m("a b").is_err());
        assert!(m(",").is_err());
    }

    #[test]
    fn field_terms() {
        let o = obj(json!({}));
        let sup = ["metadata.name", "metadata.namespace", "spec.nodeName"];
        let m = |s: &str| FieldSelector::parse(s, &sup).map(|sel| sel.matches(&o));
        assert_eq!(m("metadata.name=a"), Ok(true));
        assert_eq!(m("metadata.name==a,metadata.namespace!=x"), Ok(true));
        assert_eq!(m("metadata.namespace!=ns"), Ok(false));
        assert_eq!(m("spec.nodeName=n1"), Ok(true));
        assert!(m("status.phase=Running").is_err());
        assert!(m("metadata.name").is_err());
        let escaped = FieldSelector::parse("metadata.name=a\\,b", &sup);
        assert!(escaped.is_ok_and(|s| s.terms[0].2 == "a,b"));
    }
}

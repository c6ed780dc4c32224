//! Configuration errors and where in the source text they are: the key, its line and column.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// A configuration problem with its location in the source text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path such as `heartbeat.ping_interval` or `route[1].mode`; empty for syntax errors.
    pub key: String,
    /// 1-based line of the offending key, value or table header; 0 for a `Config` built in code.
    pub line: usize,
    /// 1-based column (in characters) on that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(super) fn at(src: &str, span: Option<Range<usize>>, key: &str, message: &str) -> Self {
        let (line, column) = line_column(src, span.map_or(0, |s| s.start));
        Self { key: key.to_owned(), line, column, message: message.to_owned() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("config error: ")?;
        } else {
            write!(f, "config error at line {}, column {}: ", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    // Spans are byte offsets; step back to a char boundary rather than slice mid-char.
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Every key and array element of a parsed document with its dotted path and spans.
pub(super) struct SpanIndex {
    nodes: Vec<SpanNode>,
}

struct SpanNode {
    path: String,
    depth: usize,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

impl SpanIndex {
    pub(super) fn new(root: &DeTable<'_>) -> Self {
        let mut nodes = Vec::new();
        Self::collect_table(root, "", 0, &mut nodes);
        Self { nodes }
    }

    fn collect_table(table: &DeTable<'_>, prefix: &str, depth: usize, out: &mut Vec<SpanNode>) {
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            let path = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
            out.push(SpanNode { path: path.clone(), depth: depth + 1, key: Some(k.span()), value: v.span() });
            Self::collect_value(v.get_ref(), &path, depth + 1, out);
        }
    }

    fn collect_value(value: &DeValue<'_>, path: &str, depth: usize, out: &mut Vec<SpanNode>) {
        match value {
            DeValue::Table(t) => Self::collect_table(t, path, depth, out),
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    out.push(SpanNode { path: path.clone(), depth: depth + 1, key: None, value: v.span() });
                    Self::collect_value(v.get_ref(), &path, depth + 1, out);
                }
            }
            _ => {}
        }
    }

    /// The deepest key path whose key or value covers `pos`.
    fn path_at(&self, pos: usize) -> &str {
        let covers = |r: &Range<usize>| r.start <= pos && (pos < r.end || pos == r.start);
        self.nodes
            .iter()
            .filter(|n| covers(&n.value) || n.key.as_ref().is_some_and(covers))
            .max_by_key(|n| n.depth)
            .map_or("", |n| n.path.as_str())
    }

    /// Turns a serde error into (key, message) with friendlier wording.
    pub(super) fn describe_de_error(&self, span: Option<Range<usize>>, message: &str) -> (String, String) {
        let path = span.map_or("", |s| self.path_at(s.start));
        if let Some(rest) = message.strip_prefix("missing field ") {
            // The span points at the table lacking the key, so the key is appended.
            let field = rest.trim_matches('`');
            let key = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            return (key, format!("missing required key `{field}`"));
        }
        let message = match message.strip_prefix("unknown field ") {
            Some(rest) => format!("unknown key {rest}"),
            None => message.to_owned(),
        };
        (path.to_owned(), message)
    }

    /// Span of `key`'s value, else of `also`, else of the nearest written ancestor.
    pub(super) fn locate(&self, key: &str, also: Option<&str>) -> Range<usize> {
        let find = |p: &str| self.nodes.iter().find(|n| n.path == p).map(|n| n.value.clone());
        if let Some(span) = find(key).or_else(|| also.and_then(find)) {
            return span;
        }
        let mut path = key;
        while let Some(cut) = path.rfind(['.', '[']) {
            path = &path[..cut];
            if let Some(span) = find(path) {
                return span;
            }
        }
        0..0
    }
}

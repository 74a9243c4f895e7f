//! A positioned YAML tree (built from `saphyr-parser` events) and a small YAML emitter.
//!
//! The tree keeps every node's line and column and each scalar's raw text, so the schema
//! module decides types per field (`mode: 0644` stays the text `0644`) and can point at the
//! exact place of any error.

use crate::error::{Error, Loc};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::sync::Arc;

/// A YAML node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `~`, `null`, or nothing.
    Null,
    /// A scalar's text; `plain` is false for quoted, block and `!!str`-tagged scalars.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique (checked while parsing).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's kind for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "null".into(),
            Kind::Scalar { text, plain: true } => format!("{text:?}"),
            Kind::Scalar { text, plain: false } => format!("the string {text:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    /// The scalar text of a node, if it is a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Every scalar in the tree, mutably (for template expansion).
    pub fn visit_scalars(
        &mut self,
        f: &mut dyn FnMut(&mut String, &Loc) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match &mut self.kind {
            Kind::Null => Ok(()),
            Kind::Scalar { text, .. } => f(text, &self.loc),
            Kind::Seq(items) => items.iter_mut().try_for_each(|n| n.visit_scalars(f)),
            Kind::Map(entries) => entries.iter_mut().try_for_each(|(_, v)| v.visit_scalars(f)),
        }
    }
}

/// Parses one YAML document. An empty stream gives `None`.
pub(crate) fn parse(file: &Arc<str>, text: &str) -> Result<Option<Node>, Error> {
    let mut p = Builder {
        file: file.clone(),
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    let mut doc = None;
    loop {
        let (ev, span) = p.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => return Ok(doc),
            Event::DocumentStart(_) => {
                if doc.is_some() {
                    return Err(p
                        .loc(&span)
                        .err("expected a single YAML document, found a second one"));
                }
                let (ev, span) = p.next()?;
                doc = Some(p.node(ev, span)?);
            }
            other => {
                doc = Some(p.node(other, span)?);
            }
        }
    }
}

struct Builder<'a> {
    file: Arc<str>,
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
}

impl<'a> Builder<'a> {
    fn loc(&self, span: &Span) -> Loc {
        Loc::new(&self.file, span.start.line(), span.start.col() + 1)
    }

    fn next(&mut self) -> Result<(Event<'a>, Span), Error> {
        match self.parser.next_event() {
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => {
                let m = e.marker();
                Err(Loc::new(&self.file, m.line(), m.col() + 1)
                    .err(format!("invalid YAML: {}", e.info())))
            }
            None => Err(Loc::new(&self.file, 0, 0).err("invalid YAML: unexpected end of input")),
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span) -> Result<Node, Error> {
        let loc = self.loc(&span);
        let (node, anchor) = match ev {
            Event::Alias(id) => {
                let mut n = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| loc.err("alias to an unknown anchor"))?;
                n.loc = loc;
                return Ok(n);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tagged_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !tagged_str;
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                (Node { kind, loc }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, span)?);
                }
                (
                    Node {
                        kind: Kind::Seq(items),
                        loc,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if ev == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(ev, span)?;
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span)?;
                    let Some(k) = key.text().map(str::to_owned) else {
                        return Err(key
                            .loc
                            .err(format!("expected a string key, found {}", key.describe())));
                    };
                    if k == "<<" && matches!(key.kind, Kind::Scalar { plain: true, .. }) {
                        // YAML merge key: explicit keys of this mapping win.
                        match value.kind {
                            Kind::Map(m) => merged.extend(m),
                            Kind::Seq(items) => {
                                for item in items {
                                    match item.kind {
                                        Kind::Map(m) => merged.extend(m),
                                        _ => {
                                            return Err(item
                                                .loc
                                                .err("a merge key (<<) takes mappings"));
                                        }
                                    }
                                }
                            }
                            _ => return Err(value.loc.err("a merge key (<<) takes a mapping")),
                        }
                        continue;
                    }
                    if let Some((first, _)) = entries.iter().find(|(e, _)| e.text() == Some(&k)) {
                        return Err(key.loc.err(format!(
                            "duplicate key {k:?} (first at line {})",
                            first.loc.line
                        )));
                    }
                    entries.push((key, value));
                }
                for (k, v) in merged {
                    if !entries.iter().any(|(e, _)| e.text() == k.text()) {
                        entries.push((k, v));
                    }
                }
                (
                    Node {
                        kind: Kind::Map(entries),
                        loc,
                    },
                    anchor,
                )
            }
            other => return Err(loc.err(format!("invalid YAML: unexpected {other:?}"))),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

/// Renders a node (for example parsed from JSON text, which keeps field order) as block-style YAML.
pub(crate) fn emit(node: &Node) -> String {
    let mut out = String::new();
    if is_inline(node) {
        out.push_str(&inline_text(node));
        out.push('\n');
    } else {
        emit_block(node, 0, &mut out);
    }
    out
}

fn is_inline(n: &Node) -> bool {
    match &n.kind {
        Kind::Map(m) => m.is_empty(),
        Kind::Seq(a) => a.is_empty(),
        _ => true,
    }
}

fn inline_text(n: &Node) -> String {
    match &n.kind {
        Kind::Map(_) => "{}".into(),
        Kind::Seq(_) => "[]".into(),
        Kind::Null => "null".into(),
        Kind::Scalar { text, plain: true } => text.clone(),
        Kind::Scalar { text, plain: false } => string_text(text),
    }
}

fn emit_block(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match &node.kind {
        Kind::Map(m) => {
            for (k, v) in m {
                out.push_str(&pad);
                out.push_str(&string_text(k.text().unwrap_or_default()));
                out.push(':');
                if is_inline(v) {
                    out.push(' ');
                    out.push_str(&inline_text(v));
                    out.push('\n');
                } else {
                    out.push('\n');
                    emit_block(v, indent + 2, out);
                }
            }
        }
        Kind::Seq(items) => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                if is_inline(item) {
                    out.push_str(&inline_text(item));
                    out.push('\n');
                } else {
                    let mut inner = String::new();
                    emit_block(item, indent + 2, &mut inner);
                    // The first line goes after the dash.
                    out.push_str(inner.trim_start_matches(' '));
                }
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&inline_text(node));
            out.push('\n');
        }
    }
}

/// A string as a plain scalar when that reads back as the same string, else double-quoted.
fn string_text(s: &str) -> String {
    if needs_quotes(s) {
        // A JSON string is a valid YAML double-quoted scalar.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    } else {
        s.to_string()
    }
}

fn needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    if "-?:,[]{}#&*!|>'\"%@`~ ".contains(first) {
        return true;
    }
    if s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || s.contains('\t')
    {
        return true;
    }
    if s.chars().any(|c| c.is_control()) {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
    ) {
        return true;
    }
    looks_numeric(s)
}

fn looks_numeric(s: &str) -> bool {
    let t = s.trim_start_matches(['-', '+']);
    !t.is_empty()
        && (t
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_' || c == 'e' || c == 'E')
            && t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            || t.starts_with("0x")
            || t.starts_with("0o")
            || matches!(t.to_ascii_lowercase().as_str(), ".inf" | ".nan"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.yml")
    }

    #[test]
    fn positions_are_one_based() {
        let n = parse(&file(), "a:\n  - x\n  - 'y'\n").unwrap().unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!("not a map")
        };
        let Kind::Seq(items) = &entries[0].1.kind else {
            panic!("not a seq")
        };
        assert_eq!((items[1].loc.line, items[1].loc.column), (3, 5));
        assert!(matches!(&items[1].kind, Kind::Scalar { plain: false, .. }));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse(&file(), "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.yml:3:1: duplicate key \"a\" (first at line 1)"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse(&file(), "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("t.yml:"), "{e}");
        assert!(e.to_string().contains("invalid YAML"), "{e}");
    }

    #[test]
    fn anchors_and_merge_keys() {
        let n = parse(&file(), "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n")
            .unwrap()
            .unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!()
        };
        let Kind::Map(c) = &entries[1].1.kind else {
            panic!()
        };
        let keys: Vec<_> = c
            .iter()
            .map(|(k, v)| (k.text().unwrap(), v.text().unwrap()))
            .collect();
        assert_eq!(keys, [("y", "3"), ("x", "1")]);
    }

    #[test]
    fn empty_stream_is_none() {
        assert!(parse(&file(), "# nothing\n").unwrap().is_none());
    }

    #[test]
    fn emitter_round_trips_through_parser() {
        let json = r#"{"a": ["x", "true", "0644", "- x", "a: b", ""],
            "b": {"c": [{"d": 1, "e": [1, 2]}], "f": {}}, "g": "multi\nline"}"#;
        let text = emit(&parse(&file(), json).unwrap().unwrap());
        let n = parse(&file(), &text).unwrap().unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!()
        };
        let Kind::Seq(items) = &entries[0].1.kind else {
            panic!("{text}")
        };
        let texts: Vec<_> = items.iter().map(|i| i.text().unwrap_or("<null>")).collect();
        assert_eq!(texts, ["x", "true", "0644", "- x", "a: b", ""]);
        assert!(
            items[1..]
                .iter()
                .all(|i| matches!(i.kind, Kind::Scalar { plain: false, .. }))
        );
        assert!(
            text.contains("  c:\n    - d: 1\n      e:\n        - 1\n"),
            "{text}"
        );
    }
}

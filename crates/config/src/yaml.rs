//! A positioned YAML tree (built from `saphyr-parser` events) and a small YAML emitter.
//!
//! The tree keeps every node's line and column and each scalar's raw text, so the schema
//! module decides types per field (`mode: 0644` stays the text `0644`) and can point at the
//! exact place of any error.
//!
//! Documents are untrusted input (a user's YAML, or the `org.mobyproject.config` label of an image
//! pulled from anywhere), so building the tree is bounded: see [`Limits`].

use crate::error::{Error, Loc};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::sync::Arc;

/// Bounds on the tree one document may build.
///
/// An alias is a deep copy of what its anchor names, so nine anchors of nine aliases each
/// ("billion laughs") expand a few hundred bytes into 9^9 nodes; the budgets count every copy
/// and refuse an alias *before* copying it. Nesting is bounded because building the tree (and
/// walking or dropping it later) recurses once per level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Nested sequences and mappings.
    pub depth: usize,
    /// Nodes, counting every node an alias copies.
    pub nodes: usize,
    /// Bytes of scalar text, counting every byte an alias copies.
    pub bytes: usize,
}

/// The limits every document is parsed with. A large LinuxKit file has a few thousand nodes
/// and nests less than ten levels; serde_json and serde_yaml also stop at 128 levels.
pub(crate) const LIMITS: Limits = Limits {
    depth: 128,
    nodes: 100_000,
    bytes: 64 << 20,
};

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

/// Parses one YAML document within [`LIMITS`]. An empty stream gives `None`.
pub(crate) fn parse(file: &Arc<str>, text: &str) -> Result<Option<Node>, Error> {
    parse_limited(file, text, LIMITS)
}

/// Parses one YAML document within `limits`. An empty stream gives `None`.
pub(crate) fn parse_limited(
    file: &Arc<str>,
    text: &str,
    limits: Limits,
) -> Result<Option<Node>, Error> {
    let mut p = Builder {
        file: file.clone(),
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        budget: Budget {
            limits,
            depth: 0,
            nodes: 0,
            bytes: 0,
        },
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
    anchors: HashMap<usize, Anchored>,
    budget: Budget,
}

/// What has been built so far, against the limits.
struct Budget {
    limits: Limits,
    /// Collections open around the node being built.
    depth: usize,
    /// Nodes and scalar bytes built so far, alias copies included.
    nodes: usize,
    bytes: usize,
}

/// An anchored node and what one copy of it costs.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
}

impl Budget {
    /// Counts `nodes` more nodes and `bytes` more scalar bytes, refusing them past the limits.
    fn charge(&mut self, nodes: usize, bytes: usize, loc: &Loc) -> Result<(), Error> {
        let n = self.nodes.saturating_add(nodes);
        if n > self.limits.nodes {
            return Err(loc.err(format!(
                "document too large: more than {} nodes (each alias counts as a copy of its anchor)",
                self.limits.nodes
            )));
        }
        let b = self.bytes.saturating_add(bytes);
        if b > self.limits.bytes {
            return Err(loc.err(format!(
                "document too large: more than {} bytes of text (each alias counts as a copy of its anchor)",
                self.limits.bytes
            )));
        }
        self.nodes = n;
        self.bytes = b;
        Ok(())
    }

    /// Enters a sequence or mapping, refusing it past the depth limit.
    fn enter(&mut self, loc: &Loc) -> Result<(), Error> {
        if self.depth >= self.limits.depth {
            return Err(loc.err(format!("nesting deeper than {} levels", self.limits.depth)));
        }
        self.depth += 1;
        Ok(())
    }
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
        // What this node's subtree costs is what the counters grow by while building it.
        let (nodes_before, bytes_before) = (self.budget.nodes, self.budget.bytes);
        let (node, anchor) = match ev {
            Event::Alias(id) => {
                let Some(a) = self.anchors.get(&id) else {
                    return Err(loc.err("alias to an unknown anchor"));
                };
                // Charged before the copy is made: a refused alias never allocates.
                self.budget.charge(a.nodes, a.bytes, &loc)?;
                let mut n = a.node.clone();
                n.loc = loc;
                return Ok(n);
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.budget.charge(1, text.len(), &loc)?;
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
                self.budget.charge(1, 0, &loc)?;
                self.budget.enter(&loc)?;
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, span)?);
                }
                self.budget.depth -= 1;
                (
                    Node {
                        kind: Kind::Seq(items),
                        loc,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => {
                self.budget.charge(1, 0, &loc)?;
                self.budget.enter(&loc)?;
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                // Keys seen, with their lines: a list scan per key would make a mapping of
                // many keys (or a merge of a large anchor) quadratic.
                let mut seen: HashMap<String, usize> = HashMap::new();
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
                    if let Some(first) = seen.get(&k) {
                        return Err(key
                            .loc
                            .err(format!("duplicate key {k:?} (first at line {first})")));
                    }
                    seen.insert(k, key.loc.line);
                    entries.push((key, value));
                }
                self.budget.depth -= 1;
                for (k, v) in merged {
                    let text = k.text().unwrap_or_default().to_owned();
                    if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(text) {
                        e.insert(k.loc.line);
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
            let cost = Anchored {
                node: node.clone(),
                nodes: self.budget.nodes - nodes_before,
                bytes: self.budget.bytes - bytes_before,
            };
            self.anchors.insert(anchor, cost);
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

    /// Nine anchors of nine aliases each: 9^9 scalars once expanded.
    fn alias_bomb() -> String {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        text
    }

    #[test]
    fn alias_bomb_is_refused_before_it_expands() {
        let start = std::time::Instant::now();
        let e = parse(&file(), &alias_bomb()).unwrap_err().to_string();
        // a5 would copy a4 (66 430 nodes) nine times: its first alias passes the budget.
        assert!(e.starts_with("t.yml:6:10: document too large"), "{e}");
        assert!(e.contains("more than 100000 nodes"), "{e}");
        assert!(e.contains("alias"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn aliases_are_charged_as_copies_before_copying() {
        // 1 map + key a + seq + 3 items + key b + a copy of the 4-node seq = 11 nodes.
        let text = "a: &x [1, 2, 3]\nb: *x\n";
        let limits = |nodes| Limits {
            depth: 8,
            nodes,
            bytes: 1 << 10,
        };
        assert!(parse_limited(&file(), text, limits(11)).is_ok());
        let e = parse_limited(&file(), text, limits(10)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.yml:2:4: document too large: more than 10 nodes (each alias counts as a copy of its anchor)"
        );
        // Text copied by aliases counts too: "abcd" three times is 12 bytes (keys are 3).
        let text = "a: &x abcd\nb: *x\nc: *x\n";
        let limits = |bytes| Limits {
            depth: 8,
            nodes: 100,
            bytes,
        };
        assert!(parse_limited(&file(), text, limits(15)).is_ok());
        let e = parse_limited(&file(), text, limits(14)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.yml:3:4: document too large: more than 14 bytes"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_is_refused_with_a_position() {
        let n = 10_000;
        let flow_seq = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let flow_map = format!("{}1{}", "a: {".repeat(n), "}".repeat(n));
        // Compact nested block sequences: block nesting without quadratic indentation.
        let block_seq = format!("{}x\n", "- ".repeat(n));
        // Block mappings, one more space of indentation per line.
        let block_map: String = (0..1000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        for (text, expected) in [
            // The scanner looks ahead for a key after `[` and stops at its own limit first.
            (
                &flow_seq,
                "t.yml:1:256: invalid YAML: recursion limit exceeded",
            ),
            (&flow_map, "t.yml:1:512: nesting deeper than 128 levels"),
            (&block_seq, "t.yml:1:257: nesting deeper than 128 levels"),
            (&block_map, "t.yml:129:129: nesting deeper than 128 levels"),
        ] {
            let start = std::time::Instant::now();
            let e = parse(&file(), text).unwrap_err().to_string();
            assert_eq!(e, expected);
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
        }
        // 128 levels are fine.
        let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(parse(&file(), &ok).is_ok());
    }

    #[test]
    fn a_few_aliases_and_many_keys_still_parse() {
        let text = "x: &b {p: 1, q: [a, b]}\ny: *b\nz:\n  <<: *b\n  p: 2\nw: [*b, *b]\n";
        let n = parse(&file(), text).unwrap().unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!()
        };
        assert_eq!(entries.len(), 4);
        let Kind::Map(z) = &entries[2].1.kind else {
            panic!()
        };
        assert_eq!(z[0].1.text(), Some("2"));
        // A flat mapping of many keys is linear, not quadratic, to check for duplicates.
        let many: String = (0..40_000).map(|i| format!("k{i}: {i}\n")).collect();
        let start = std::time::Instant::now();
        assert!(parse(&file(), &many).is_ok());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
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

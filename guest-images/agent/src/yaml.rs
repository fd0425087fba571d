//! YAML for `#cloud-config` user data: the saphyr project's YAML 1.2 event
//! parser (`saphyr-parser`) feeds a small tree built here.
//!
//! The parser is the maintained one; this module only decides what the
//! events mean for cloud-config (about 300 lines with their comments):
//!
//! - Every scalar stays text (`0644` is the text "0644", not the number
//!   644 or 420): file modes and booleans are read by `cloud_config.rs`
//!   from the text the user wrote. That is why the tree is built from
//!   events and not with `saphyr`'s or `yaml-rust2`'s own loader, whose
//!   scalars are already typed (`0644` → 644).
//! - Anchors and aliases are resolved by copying; `<<` merge keys work as
//!   in PyYAML, which cloud-init uses (explicit keys win, then the merged
//!   mappings in order). A later duplicate key replaces an earlier one, as
//!   in PyYAML.
//! - Core-schema tags (`!!str`, `!!int`, …) are accepted and change
//!   nothing; any other tag (`!!binary`, `!custom`) is an error with its
//!   line, as are mapping keys that are not scalars.
//!
//! User data is at most 16 KiB, but aliases can still make a document
//! explode when expanded ("billion laughs"), so expansion stops at
//! [`MAX_NODES`] and nesting at [`MAX_DEPTH`].
//!
//! Cost, measured on the static release build (`build.sh`): the agent grew
//! from 1 906 128 to 2 021 040 bytes (+112 KiB, +6 %) with this parser and
//! the `base64` crate together, replacing 550 hand-written lines. Parsing
//! makes no syscalls of its own: a whole boot applying a two-file
//! cloud-config is 116–122 syscalls (`strace -f -c`) before and after.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// Most nodes a document may expand to (aliases included).
const MAX_NODES: usize = 100_000;
/// Deepest nesting of sequences and mappings.
const MAX_DEPTH: usize = 64;

/// A parsed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Yaml {
    /// An empty value, `~` or `null`.
    Null,
    /// Any scalar, as text.
    Str(String),
    /// A sequence.
    List(Vec<Yaml>),
    /// A mapping, in document order.
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn count_nodes(&self) -> usize {
        match self {
            Yaml::Null | Yaml::Str(_) => 1,
            Yaml::List(items) => 1 + items.iter().map(Yaml::count_nodes).sum::<usize>(),
            Yaml::Map(entries) => 1 + entries.iter().map(|(_, v)| v.count_nodes()).sum::<usize>(),
        }
    }
}

/// Why a document could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a one-document stream; an empty stream is [`Yaml::Null`].
pub fn parse(src: &str) -> Result<Yaml, ParseError> {
    let mut builder = Builder::default();
    let mut root = None;
    for event in Parser::new_from_str(src) {
        let (event, span) = event.map_err(|e| ParseError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        if root.is_some() && matches!(event, Event::DocumentStart(_)) {
            // cloud-init (PyYAML's safe_load) refuses a second document too.
            return Err(ParseError {
                line: span.start.line(),
                message: "a second YAML document; cloud-config is one document".to_string(),
            });
        }
        if let Some(doc) = builder.on_event(event, span)? {
            root = Some(doc);
        }
    }
    Ok(root.unwrap_or(Yaml::Null))
}

/// A collection still being read.
enum Open {
    Seq {
        anchor: usize,
        items: Vec<Yaml>,
    },
    Map {
        anchor: usize,
        entries: Vec<(String, Yaml)>,
        /// Mappings named by `<<` keys, merged in when the mapping ends.
        merges: Vec<Yaml>,
        /// The key read, waiting for its value; `None` between entries.
        key: Option<Key>,
    },
}

/// A mapping key: a plain `<<` merges mappings in, any other scalar names
/// an entry.
enum Key {
    Merge,
    Name(String),
}

/// Builds the tree from parser events with an explicit stack, so a hostile
/// document cannot overflow the call stack.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    /// Anchored nodes by the parser's anchor id.
    anchors: Vec<(usize, Yaml)>,
    /// Nodes made so far, aliases counted at their expanded size.
    nodes: usize,
}

impl Builder {
    /// Feeds one event; returns the document once its root is complete.
    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<Option<Yaml>, ParseError> {
        let line = span.start.line();
        let error = |message: String| ParseError { line, message };
        let node = match event {
            Event::Scalar(text, style, anchor, tag) => {
                check_tag(tag.as_deref()).map_err(error)?;
                let is_null = style == ScalarStyle::Plain
                    && tag.is_none()
                    && matches!(&*text, "" | "~" | "null" | "Null" | "NULL");
                let node = if is_null {
                    Yaml::Null
                } else {
                    Yaml::Str(text.into_owned())
                };
                self.anchor(anchor, &node);
                (node, style == ScalarStyle::Plain)
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| error("alias to an unknown anchor".to_string()))?;
                self.nodes += node.count_nodes();
                (node, false)
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                check_tag(tag.as_deref()).map_err(error)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(error(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                self.stack
                    .push(if matches!(event, Event::SequenceStart(..)) {
                        Open::Seq {
                            anchor,
                            items: Vec::new(),
                        }
                    } else {
                        Open::Map {
                            anchor,
                            entries: Vec::new(),
                            merges: Vec::new(),
                            key: None,
                        }
                    });
                return Ok(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq { anchor, items }) => {
                        let node = Yaml::List(items);
                        self.anchor(anchor, &node);
                        node
                    }
                    Some(Open::Map {
                        anchor,
                        entries,
                        merges,
                        ..
                    }) => {
                        let node = Yaml::Map(merge(entries, merges).map_err(error)?);
                        self.anchor(anchor, &node);
                        node
                    }
                    None => return Err(error("unbalanced end of a collection".to_string())),
                };
                (node, false)
            }
            // Stream and document markers carry nothing for cloud-config.
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => return Ok(None),
        };
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(error(format!(
                "document expands to more than {MAX_NODES} nodes (aliases?)"
            )));
        }
        self.add(node, line)
    }

    fn anchor(&mut self, anchor: usize, node: &Yaml) {
        // The parser numbers anchors from 1; 0 means "none".
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
    }

    /// Places a finished node into the open collection, or returns it as
    /// the document. `plain` says the node was a plain (unquoted) scalar,
    /// which is what makes a `<<` key a merge key.
    fn add(
        &mut self,
        (node, plain): (Yaml, bool),
        line: usize,
    ) -> Result<Option<Yaml>, ParseError> {
        match self.stack.last_mut() {
            None => Ok(Some(node)),
            Some(Open::Seq { items, .. }) => {
                items.push(node);
                Ok(None)
            }
            Some(Open::Map {
                entries,
                merges,
                key,
                ..
            }) => {
                match key.take() {
                    None => {
                        *key = Some(match node {
                            Yaml::Str(text) if plain && text == "<<" => Key::Merge,
                            Yaml::Str(text) => Key::Name(text),
                            Yaml::Null => Key::Name(String::new()),
                            _ => {
                                return Err(ParseError {
                                    line,
                                    message: "mapping keys must be scalars".to_string(),
                                })
                            }
                        });
                    }
                    Some(Key::Merge) => merges.push(node),
                    Some(Key::Name(k)) => match entries.iter_mut().find(|(e, _)| *e == k) {
                        Some((_, v)) => *v = node,
                        None => entries.push((k, node)),
                    },
                }
                Ok(None)
            }
        }
    }
}

/// Adds the entries of `<<` merged mappings that the mapping does not set
/// itself; with a list of mappings, earlier ones win.
fn merge(
    mut entries: Vec<(String, Yaml)>,
    merges: Vec<Yaml>,
) -> Result<Vec<(String, Yaml)>, String> {
    for merged in merges {
        let maps = match merged {
            Yaml::List(items) => items,
            other => vec![other],
        };
        for map in maps {
            let Yaml::Map(extra) = map else {
                return Err("a << merge key needs a mapping or a list of mappings".to_string());
            };
            for (k, v) in extra {
                if !entries.iter().any(|(e, _)| *e == k) {
                    entries.push((k, v));
                }
            }
        }
    }
    Ok(entries)
}

/// Accepts no tag or a core-schema one (`!!str`, `!!int`, …), which this
/// module treats as text anyway.
fn check_tag(tag: Option<&Tag>) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(t)
            if t.is_yaml_core_schema()
                && matches!(
                    t.suffix.as_str(),
                    "str" | "int" | "float" | "bool" | "null" | "seq" | "map"
                ) =>
        {
            Ok(())
        }
        Some(t) if t.is_yaml_core_schema() => Err(format!("tag !!{} is not supported", t.suffix)),
        Some(t) => Err(format!("tag {}{} is not supported", t.handle, t.suffix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Yaml {
        Yaml::Str(v.to_string())
    }

    #[test]
    fn cloud_config_document_parses() {
        let doc = parse(
            "#cloud-config\n\
             # a comment\n\
             write_files:\n\
             \x20 - path: /etc/motd\n\
             \x20   permissions: '0644'\n\
             \x20   content: |\n\
             \x20     hello\n\
             \x20       indented\n\
             \n\
             \x20     world # not a comment\n\
             \x20 - path: \"/etc/b\"\n\
             \x20   content: aGk=\n\
             \x20   encoding: b64\n\
             runcmd:\n\
             - echo one\n\
             - [ sh, -c, \"echo 'two, three'\" ]\n\
             - - ls\n\
             \x20 - -l\n\
             packages: [nginx]\n",
        )
        .expect("parse");
        let files = match doc.get("write_files") {
            Some(Yaml::List(f)) => f,
            other => panic!("write_files: {other:?}"),
        };
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].get("permissions"), Some(&s("0644")));
        assert_eq!(
            files[0].get("content"),
            Some(&s("hello\n  indented\n\nworld # not a comment\n"))
        );
        assert_eq!(files[1].get("path"), Some(&s("/etc/b")));
        assert_eq!(
            doc.get("runcmd"),
            Some(&Yaml::List(vec![
                s("echo one"),
                Yaml::List(vec![s("sh"), s("-c"), s("echo 'two, three'")]),
                Yaml::List(vec![s("ls"), s("-l")]),
            ]))
        );
        assert_eq!(doc.get("packages"), Some(&Yaml::List(vec![s("nginx")])));
    }

    #[test]
    fn chomping_and_folding() {
        let doc = parse("a: |-\n  x\n  y\nb: >\n  one\n  two\n\n  three\nc: |+\n  k\n\nd: x\n")
            .expect("parse");
        assert_eq!(doc.get("a"), Some(&s("x\ny")));
        assert_eq!(doc.get("b"), Some(&s("one two\nthree\n")));
        assert_eq!(doc.get("c"), Some(&s("k\n\n")));
        assert_eq!(doc.get("d"), Some(&s("x")));
    }

    #[test]
    fn quoted_scalars_unescape_and_only_plain_null_is_null() {
        let doc = parse("a: \"tab\\there\\n\"\nb: 'it''s'\nc: ~\nd:\ne: 'null'\n").expect("parse");
        assert_eq!(doc.get("a"), Some(&s("tab\there\n")));
        assert_eq!(doc.get("b"), Some(&s("it's")));
        assert_eq!(doc.get("c"), Some(&Yaml::Null));
        assert_eq!(doc.get("d"), Some(&Yaml::Null));
        assert_eq!(doc.get("e"), Some(&s("null")));
    }

    #[test]
    fn scalars_keep_the_text_written_not_a_number() {
        let doc = parse("a: 0644\nb: 0o600\nc: true\nd: !!str 0755\n").expect("parse");
        assert_eq!(doc.get("a"), Some(&s("0644")));
        assert_eq!(doc.get("b"), Some(&s("0o600")));
        assert_eq!(doc.get("c"), Some(&s("true")));
        assert_eq!(doc.get("d"), Some(&s("0755")));
    }

    #[test]
    fn flow_mappings_and_nested_flow_sequences_parse() {
        let doc = parse(
            "users: [{name: ada, groups: [wheel, adm]}, {name: bob}]\n\
             runcmd: [[ls, -l], 'echo hi']\n",
        )
        .expect("parse");
        let users = match doc.get("users") {
            Some(Yaml::List(u)) => u,
            other => panic!("users: {other:?}"),
        };
        assert_eq!(users[0].get("name"), Some(&s("ada")));
        assert_eq!(
            users[0].get("groups"),
            Some(&Yaml::List(vec![s("wheel"), s("adm")]))
        );
        assert_eq!(users[1].get("name"), Some(&s("bob")));
        assert_eq!(
            doc.get("runcmd"),
            Some(&Yaml::List(vec![
                Yaml::List(vec![s("ls"), s("-l")]),
                s("echo hi")
            ]))
        );
    }

    #[test]
    fn multi_line_plain_and_quoted_scalars_fold_into_one_line() {
        let doc = parse("a: one\n  two\n  three\nb: \"x\n  y\"\n").expect("parse");
        assert_eq!(doc.get("a"), Some(&s("one two three")));
        assert_eq!(doc.get("b"), Some(&s("x y")));
    }

    #[test]
    fn aliases_copy_the_anchored_node_and_merge_keys_fill_in_missing_keys() {
        let doc = parse(
            "defaults: &file\n\
             \x20 permissions: '0600'\n\
             \x20 owner: root\n\
             write_files:\n\
             - <<: *file\n\
             \x20 path: /a\n\
             - <<: *file\n\
             \x20 path: /b\n\
             \x20 permissions: '0644'\n\
             keys: &k [x, y]\n\
             again: *k\n",
        )
        .expect("parse");
        let files = match doc.get("write_files") {
            Some(Yaml::List(f)) => f,
            other => panic!("write_files: {other:?}"),
        };
        assert_eq!(files[0].get("permissions"), Some(&s("0600")));
        assert_eq!(files[0].get("path"), Some(&s("/a")));
        assert_eq!(files[1].get("permissions"), Some(&s("0644")));
        assert_eq!(files[1].get("owner"), Some(&s("root")));
        assert_eq!(doc.get("again"), doc.get("keys"));
    }

    #[test]
    fn later_duplicate_key_wins_as_in_pyyaml() {
        let doc = parse("a: 1\na: 2\n").expect("parse");
        assert_eq!(doc, Yaml::Map(vec![("a".to_string(), s("2"))]));
    }

    #[test]
    fn a_second_document_is_an_error() {
        assert_eq!(
            parse("---\na: 1\n").map(|d| d.get("a").cloned()),
            Ok(Some(s("1")))
        );
        assert_eq!(parse("a: 1\n---\nb: 2\n").map_err(|e| e.line), Err(2));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("#cloud-config\n"), Ok(Yaml::Null));
        assert_eq!(parse(""), Ok(Yaml::Null));
    }

    #[test]
    fn broken_yaml_is_an_error_with_its_line() {
        assert_eq!(parse("a: b\n   c: d\n").map_err(|e| e.line), Err(2));
        assert!(parse("a: \"open\n").is_err());
        assert!(parse("a:\n\t- b\n").is_err());
        assert!(parse("a: [b\nc: d\n").is_err());
    }

    #[test]
    fn unknown_tags_complex_keys_and_unknown_aliases_are_errors() {
        let err = parse("a: 1\nb: !!binary aGk=\n").expect_err("binary");
        assert_eq!(err.line, 2);
        assert_eq!(err.message, "tag !!binary is not supported");
        assert!(parse("? [a, b]\n: c\n").is_err());
        assert!(parse("a: *nowhere\n").is_err());
        assert!(parse("<<: [x]\n").is_err());
    }

    #[test]
    fn alias_bombs_stop_at_the_node_limit() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&doc).expect_err("bomb");
        assert!(err.message.contains("nodes"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let doc = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse(&doc).is_err());
    }
}

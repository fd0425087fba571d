//! A parser for the YAML subset that `#cloud-config` user data uses.
//!
//! Written here instead of pulling `serde_yaml` (deprecated, and with
//! `unsafe-libyaml` several hundred KB of code to start in a slow guest):
//! cloud-config documents are block mappings and sequences of strings.
//!
//! Supported: block mappings and sequences (also a sequence at the same
//! indentation as its key), `- key: value` items, flow sequences of scalars
//! `[a, "b", 'c']`, plain, single- and double-quoted scalars, literal `|`
//! and folded `>` block scalars with `-`/`+` chomping, `#` comments, `---`.
//! Not supported, and reported as an error with the line number: flow
//! mappings, nested flow sequences, anchors and aliases, tags, multi-line
//! plain or quoted scalars, tabs for indentation. Every scalar stays a
//! string (`0644` is the text "0644", not the number 420), which is what
//! cloud-config wants for file modes.

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

/// Parses one document.
pub fn parse(src: &str) -> Result<Yaml, ParseError> {
    let mut parser = Parser {
        lines: src
            .lines()
            .enumerate()
            .map(|(i, raw)| {
                let indent = raw.len() - raw.trim_start_matches(' ').len();
                Line {
                    number: i + 1,
                    indent,
                    text: raw[indent..].trim_end().to_string(),
                }
            })
            .collect(),
        pos: 0,
    };
    let node = parser.node(0)?;
    parser.skip_blank();
    if let Some(line) = parser.lines.get(parser.pos) {
        return Err(parser.error_at(line.number, "unexpected content after the document"));
    }
    Ok(node)
}

struct Line {
    number: usize,
    indent: usize,
    /// The line after its indentation, trailing space trimmed. A `- item`
    /// line is rewritten in place to the item, at the item's column.
    text: String,
}

struct Parser {
    lines: Vec<Line>,
    pos: usize,
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

fn is_block_scalar_header(text: &str) -> bool {
    text.starts_with('|') || text.starts_with('>')
}

impl Parser {
    fn error_at(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line,
            message: message.into(),
        }
    }

    /// Moves past blank lines, comments and document markers.
    fn skip_blank(&mut self) {
        while let Some(line) = self.lines.get(self.pos) {
            let t = &line.text;
            let marker = line.indent == 0 && (t == "---" || t == "...");
            if t.is_empty() || t.starts_with('#') || marker {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next significant line's indentation and text.
    fn peek(&mut self) -> Result<Option<(usize, usize, String)>, ParseError> {
        self.skip_blank();
        match self.lines.get(self.pos) {
            Some(l) if l.text.starts_with('\t') => {
                Err(self.error_at(l.number, "tabs are not allowed for indentation"))
            }
            Some(l) => Ok(Some((l.indent, l.number, l.text.clone()))),
            None => Ok(None),
        }
    }

    /// A node whose lines are indented at least `min_indent`.
    fn node(&mut self, min_indent: usize) -> Result<Yaml, ParseError> {
        let Some((indent, number, text)) = self.peek()? else {
            return Ok(Yaml::Null);
        };
        if indent < min_indent {
            return Ok(Yaml::Null);
        }
        if is_seq_item(&text) {
            return self.sequence(indent);
        }
        if split_key(&text, number)?.is_some() {
            return self.mapping(indent);
        }
        self.pos += 1;
        if is_block_scalar_header(&text) {
            return self.block_scalar(&text, min_indent, number);
        }
        inline(&text, number)
    }

    fn sequence(&mut self, indent: usize) -> Result<Yaml, ParseError> {
        let mut items = Vec::new();
        while let Some((i, number, text)) = self.peek()? {
            if i > indent {
                return Err(self.error_at(number, "unexpected indentation"));
            }
            if i < indent || !is_seq_item(&text) {
                break;
            }
            let after_dash = &text[1..];
            let item = after_dash.trim_start();
            if item.is_empty() {
                self.pos += 1;
                items.push(self.node(indent + 1)?);
                continue;
            }
            let column = indent + 1 + (after_dash.len() - item.len());
            if is_seq_item(item) || split_key(item, number)?.is_some() {
                // `- key: v` or `- - x`: the item is a block node that
                // starts at its own column.
                let line = &mut self.lines[self.pos];
                line.indent = column;
                line.text = item.to_string();
                items.push(self.node(column)?);
            } else {
                self.pos += 1;
                items.push(if is_block_scalar_header(item) {
                    self.block_scalar(item, indent + 1, number)?
                } else {
                    inline(item, number)?
                });
            }
        }
        Ok(Yaml::List(items))
    }

    fn mapping(&mut self, indent: usize) -> Result<Yaml, ParseError> {
        let mut entries = Vec::new();
        while let Some((i, number, text)) = self.peek()? {
            if i > indent {
                return Err(self.error_at(number, "unexpected indentation"));
            }
            if i < indent || is_seq_item(&text) {
                break;
            }
            let (key, value_text) = split_key(&text, number)?
                .ok_or_else(|| self.error_at(number, "expected `key: value`"))?;
            self.pos += 1;
            let value = if value_text.is_empty() {
                match self.peek()? {
                    Some((i2, _, _)) if i2 > indent => self.node(indent + 1)?,
                    Some((i2, _, t2)) if i2 == indent && is_seq_item(&t2) => {
                        self.sequence(indent)?
                    }
                    _ => Yaml::Null,
                }
            } else if is_block_scalar_header(&value_text) {
                self.block_scalar(&value_text, indent + 1, number)?
            } else {
                inline(&value_text, number)?
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(self.error_at(number, format!("duplicate key {key:?}")));
            }
            entries.push((key, value));
        }
        Ok(Yaml::Map(entries))
    }

    /// The lines of a `|` or `>` scalar: every following line indented at
    /// least `min_indent`, or blank.
    fn block_scalar(
        &mut self,
        header: &str,
        min_indent: usize,
        number: usize,
    ) -> Result<Yaml, ParseError> {
        let folded = header.starts_with('>');
        let indicators = strip_comment(&header[1..]).trim();
        let (mut strip, mut keep) = (false, false);
        for c in indicators.chars() {
            match c {
                '-' => strip = true,
                '+' => keep = true,
                _ => {
                    return Err(self.error_at(
                        number,
                        format!("block scalar indicator {indicators:?} is not supported"),
                    ))
                }
            }
        }
        let mut body: Vec<Option<(usize, String)>> = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.text.is_empty() {
                body.push(None);
            } else if line.indent >= min_indent {
                body.push(Some((line.indent, line.text.clone())));
            } else {
                break;
            }
            self.pos += 1;
        }
        let trailing_blank = body.iter().rev().take_while(|l| l.is_none()).count();
        body.truncate(body.len() - trailing_blank);
        let block_indent = body.iter().flatten().map(|(i, _)| *i).next().unwrap_or(0);
        let mut lines = Vec::with_capacity(body.len());
        for (n, line) in body.iter().enumerate() {
            lines.push(match line {
                None => String::new(),
                Some((i, text)) => {
                    let extra = i.checked_sub(block_indent).ok_or_else(|| {
                        self.error_at(
                            number + 1 + n,
                            "block scalar line indented less than its first line",
                        )
                    })?;
                    format!("{}{text}", " ".repeat(extra))
                }
            });
        }
        let mut out = if folded {
            // Lines of text fold into one with spaces; blank lines become
            // the line breaks.
            let mut out = String::new();
            let mut previous_was_text = false;
            for line in &lines {
                if line.is_empty() {
                    out.push('\n');
                    previous_was_text = false;
                } else {
                    if previous_was_text {
                        out.push(' ');
                    }
                    out.push_str(line);
                    previous_was_text = true;
                }
            }
            out
        } else {
            lines.join("\n")
        };
        if !out.is_empty() && !strip {
            out.push('\n');
            if keep {
                out.push_str(&"\n".repeat(trailing_blank));
            }
        }
        Ok(Yaml::Str(out))
    }
}

/// Cuts a ` # comment` off a plain (unquoted) text.
fn strip_comment(text: &str) -> &str {
    if text.starts_with('#') {
        return "";
    }
    match text.find(" #") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Splits `key: value` (or `key:`) into the key and the value text.
fn split_key(text: &str, number: usize) -> Result<Option<(String, String)>, ParseError> {
    if text.starts_with('"') || text.starts_with('\'') {
        let (key, end) = quoted(text, number)?;
        let rest = &text[end..];
        return Ok(match rest.strip_prefix(':') {
            Some(v) if v.is_empty() || v.starts_with(' ') => Some((key, v.trim().to_string())),
            _ => None,
        });
    }
    if text.starts_with('[') || text.starts_with('{') || text.starts_with('#') {
        return Ok(None);
    }
    let uncommented = strip_comment(text);
    let colon = if let Some(i) = text.find(": ") {
        i
    } else if uncommented.ends_with(':') {
        uncommented.len() - 1
    } else {
        return Ok(None);
    };
    let key = text[..colon].trim();
    if key.is_empty() {
        return Ok(None);
    }
    // The value keeps its own comments: `inline` strips them knowing
    // about quotes. A value that is only a comment is empty.
    let value = text[colon + 1..].trim();
    let value = if value.starts_with('#') { "" } else { value };
    Ok(Some((key.to_string(), value.to_string())))
}

/// A value written on the same line as its key or dash.
fn inline(text: &str, number: usize) -> Result<Yaml, ParseError> {
    let err = |m: &str| ParseError {
        line: number,
        message: m.to_string(),
    };
    if text.starts_with('{') {
        return Err(err("flow mappings `{...}` are not supported"));
    }
    if text.starts_with('&') || text.starts_with('*') || text.starts_with('!') {
        return Err(err("anchors, aliases and tags are not supported"));
    }
    if let Some(inner) = text.strip_prefix('[') {
        let mut items = Vec::new();
        let mut rest = inner.trim_start();
        loop {
            if let Some(after) = rest.strip_prefix(']') {
                if !strip_comment(after).trim().is_empty() {
                    return Err(err("text after `]`"));
                }
                return Ok(Yaml::List(items));
            }
            if rest.starts_with('[') || rest.starts_with('{') {
                return Err(err("nested flow collections are not supported"));
            }
            let (item, after) = if rest.starts_with('"') || rest.starts_with('\'') {
                let (s, end) = quoted(rest, number)?;
                (Yaml::Str(s), rest[end..].trim_start())
            } else {
                let end = rest
                    .find([',', ']'])
                    .ok_or_else(|| err("unterminated flow sequence"))?;
                (plain(rest[..end].trim()), &rest[end..])
            };
            items.push(item);
            rest = match after.strip_prefix(',') {
                Some(r) => r.trim_start(),
                None if after.starts_with(']') => after,
                None => return Err(err("expected `,` or `]` in flow sequence")),
            };
        }
    }
    if text.starts_with('"') || text.starts_with('\'') {
        let (s, end) = quoted(text, number)?;
        if !strip_comment(&text[end..]).trim().is_empty() {
            return Err(err("text after a quoted scalar"));
        }
        return Ok(Yaml::Str(s));
    }
    Ok(plain(strip_comment(text).trim()))
}

fn plain(text: &str) -> Yaml {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Yaml::Null,
        _ => Yaml::Str(text.to_string()),
    }
}

/// A quoted scalar at the start of `text`: its value and the byte index
/// after the closing quote.
fn quoted(text: &str, number: usize) -> Result<(String, usize), ParseError> {
    let err = |m: &str| ParseError {
        line: number,
        message: m.to_string(),
    };
    let mut chars = text.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err(err("expected a quoted scalar"));
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            ('\'', '\'') => {
                if text[i + 1..].starts_with('\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Ok((out, i + 1));
                }
            }
            ('"', '"') => return Ok((out, i + 1)),
            ('"', '\\') => {
                let (_, e) = chars.next().ok_or_else(|| err("unterminated escape"))?;
                let hex_digits = match e {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    _ => 0,
                };
                if hex_digits > 0 {
                    let mut code = 0u32;
                    for _ in 0..hex_digits {
                        let (_, h) = chars.next().ok_or_else(|| err("short escape"))?;
                        code = code * 16 + h.to_digit(16).ok_or_else(|| err("bad hex escape"))?;
                    }
                    out.push(char::from_u32(code).ok_or_else(|| err("bad escape"))?);
                    continue;
                }
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    'e' => '\x1b',
                    '"' | '\\' | '/' | ' ' => e,
                    _ => return Err(err("unknown escape in double-quoted scalar")),
                });
            }
            _ => out.push(c),
        }
    }
    Err(err(
        "unterminated quoted scalar (multi-line quoted scalars are not supported)",
    ))
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
    fn quoted_scalars_unescape() {
        let doc = parse("a: \"tab\\there\\n\"\nb: 'it''s'\nc: ~\nd:\n").expect("parse");
        assert_eq!(doc.get("a"), Some(&s("tab\there\n")));
        assert_eq!(doc.get("b"), Some(&s("it's")));
        assert_eq!(doc.get("c"), Some(&Yaml::Null));
        assert_eq!(doc.get("d"), Some(&Yaml::Null));
    }

    #[test]
    fn unsupported_syntax_is_an_error_with_its_line() {
        assert_eq!(parse("a: {b: c}\n").map_err(|e| e.line), Err(1));
        assert_eq!(parse("a: b\n   c: d\n").map_err(|e| e.line), Err(2));
        assert!(parse("a: \"open\n").is_err());
        assert!(parse("a:\n\t- b\n").is_err());
    }
}

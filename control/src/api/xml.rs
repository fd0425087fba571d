//! EC2 XML responses: handlers build an [`XmlNode`] tree and this module
//! alone turns trees into bytes, so EC2's conventions live in one place:
//!
//! - the root is `<{Action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">`
//!   and its first child is `<requestId>`;
//! - element names are botocore's `locationName`s (`instanceId`, `instancesSet`);
//! - list members are `<item>` elements inside the list's element;
//! - booleans are `true`/`false`, timestamps ISO 8601 in UTC with
//!   milliseconds (`2026-11-25T23:00:00.000Z`).

use std::time::SystemTime;

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

/// The namespace of every EC2 response (API version 2016-11-15).
pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// One element of a response. Names are `&'static str` because they come
/// from the service model, never from a request.
#[derive(Debug, Clone, PartialEq)]
pub enum XmlNode {
    /// `<name>value</name>`; the value is escaped when rendered.
    Text { name: &'static str, value: String },
    /// `<name>children…</name>`: a nested structure.
    Element {
        name: &'static str,
        children: Vec<XmlNode>,
    },
    /// `<name><item>…</item>…</name>`: an EC2 list.
    List {
        name: &'static str,
        items: Vec<XmlItem>,
    },
}

/// One `<item>` of a list: a structure or a scalar (e.g. an architecture
/// name in `supportedArchitectures`).
#[derive(Debug, Clone, PartialEq)]
pub enum XmlItem {
    /// `<item>children…</item>`
    Struct(Vec<XmlNode>),
    /// `<item>value</item>`
    Text(String),
}

impl XmlNode {
    /// A string member.
    pub fn text(name: &'static str, value: impl Into<String>) -> Self {
        Self::Text {
            name,
            value: value.into(),
        }
    }

    /// A boolean member, spelled as botocore expects.
    pub fn bool(name: &'static str, value: bool) -> Self {
        Self::text(name, if value { "true" } else { "false" })
    }

    /// An integer or floating-point member.
    pub fn number(name: &'static str, value: impl std::fmt::Display) -> Self {
        Self::text(name, value.to_string())
    }

    /// A timestamp member, `YYYY-MM-DDTHH:MM:SS.mmmZ` as EC2 sends them.
    pub fn timestamp(name: &'static str, value: SystemTime) -> Self {
        Self::text(name, format_timestamp(value))
    }

    /// A nested structure.
    pub fn element(name: &'static str, children: Vec<XmlNode>) -> Self {
        Self::Element { name, children }
    }

    /// A list of structures.
    pub fn list(name: &'static str, items: impl IntoIterator<Item = Vec<XmlNode>>) -> Self {
        Self::List {
            name,
            items: items.into_iter().map(XmlItem::Struct).collect(),
        }
    }

    /// A list of strings.
    pub fn text_list<S: Into<String>>(
        name: &'static str,
        items: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::List {
            name,
            items: items.into_iter().map(|s| XmlItem::Text(s.into())).collect(),
        }
    }

    /// The element name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Text { name, .. } | Self::Element { name, .. } | Self::List { name, .. } => name,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form EC2 uses for every timestamp.
pub fn format_timestamp(value: SystemTime) -> String {
    humantime::format_rfc3339_millis(value).to_string()
}

/// The whole successful response for `action`.
pub fn render_response(action: &str, request_id: &str, members: &[XmlNode]) -> String {
    let root = format!("{action}Response");
    let mut out = Out::new();
    out.start_with_ns(&root);
    out.text_element("requestId", request_id);
    for node in members {
        out.node(node);
    }
    out.end(&root);
    out.finish()
}

/// The EC2 error document. `RequestID` is capitalised here (unlike
/// `requestId` in successes): that is what EC2 sends and botocore reads.
pub fn render_error(code: &str, message: &str, request_id: &str) -> String {
    let mut out = Out::new();
    out.start("Response");
    out.start("Errors");
    out.start("Error");
    out.text_element("Code", code);
    out.text_element("Message", message);
    out.end("Error");
    out.end("Errors");
    out.text_element("RequestID", request_id);
    out.end("Response");
    out.finish()
}

/// Makes any string safe as XML 1.0 character data. quick-xml escapes the
/// five markup characters; on top of that, characters XML 1.0 cannot carry
/// at all (most C0 controls, U+FFFE/U+FFFF) become U+FFFD, and CR becomes
/// `&#13;` because a parser would otherwise normalise it away (tag values
/// and user data may contain CRLF and must round-trip).
pub fn escape_text(value: &str) -> String {
    let valid: String = value
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            _ => c,
        })
        .collect();
    quick_xml::escape::escape(valid.as_str()).replace('\r', "&#13;")
}

/// A quick-xml writer over a `Vec`, whose writes cannot fail.
struct Out(Writer<Vec<u8>>);

impl Out {
    fn new() -> Self {
        let mut writer = Writer::new(Vec::with_capacity(1024));
        Self::write(
            &mut writer,
            Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)),
        );
        // EC2 puts a newline after the declaration; some hand-written
        // clients split on it.
        Self::write(&mut writer, Event::Text(BytesText::from_escaped("\n")));
        Self(writer)
    }

    fn write(writer: &mut Writer<Vec<u8>>, event: Event<'_>) {
        writer
            .write_event(event)
            .expect("writing XML into a Vec<u8> cannot fail");
    }

    fn start(&mut self, name: &str) {
        Self::write(&mut self.0, Event::Start(BytesStart::new(name)));
    }

    fn start_with_ns(&mut self, name: &str) {
        let start = BytesStart::new(name).with_attributes([("xmlns", EC2_NAMESPACE)]);
        Self::write(&mut self.0, Event::Start(start));
    }

    fn end(&mut self, name: &str) {
        Self::write(&mut self.0, Event::End(BytesEnd::new(name)));
    }

    fn text_element(&mut self, name: &str, value: &str) {
        self.start(name);
        Self::write(
            &mut self.0,
            Event::Text(BytesText::from_escaped(escape_text(value))),
        );
        self.end(name);
    }

    fn node(&mut self, node: &XmlNode) {
        match node {
            XmlNode::Text { name, value } => self.text_element(name, value),
            XmlNode::Element { name, children } => {
                self.start(name);
                for child in children {
                    self.node(child);
                }
                self.end(name);
            }
            XmlNode::List { name, items } => {
                self.start(name);
                for item in items {
                    match item {
                        XmlItem::Text(value) => self.text_element("item", value),
                        XmlItem::Struct(children) => {
                            self.start("item");
                            for child in children {
                                self.node(child);
                            }
                            self.end("item");
                        }
                    }
                }
                self.end(name);
            }
        }
    }

    fn finish(self) -> String {
        // Every byte written came from a &str or an ASCII literal.
        String::from_utf8(self.0.into_inner()).expect("XML built from &str is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn response_has_namespace_request_id_and_item_lists() {
        let xml = render_response(
            "DescribeRegions",
            "r-1",
            &[XmlNode::list(
                "regionInfo",
                [vec![
                    XmlNode::text("regionName", "us-east-1"),
                    XmlNode::bool("enabled", true),
                ]],
            )],
        );
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <DescribeRegionsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>r-1</requestId><regionInfo><item><regionName>us-east-1</regionName>\
             <enabled>true</enabled></item></regionInfo></DescribeRegionsResponse>"
        );
    }

    #[test]
    fn text_list_items_are_scalars() {
        let xml = render_response(
            "X",
            "r",
            &[XmlNode::text_list(
                "supportedArchitectures",
                ["x86_64", "i386"],
            )],
        );
        assert!(xml.contains(
            "<supportedArchitectures><item>x86_64</item><item>i386</item></supportedArchitectures>"
        ));
    }

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            escape_text(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &apos;Jerry&apos;&lt;/a&gt;"
        );
    }

    #[test]
    fn control_characters_become_replacement_and_cr_survives() {
        assert_eq!(
            escape_text("a\u{0}b\u{1b}c\u{ffff}"),
            "a\u{fffd}b\u{fffd}c\u{fffd}"
        );
        assert_eq!(escape_text("l1\r\nl2\tx"), "l1&#13;\nl2\tx");
        assert_eq!(escape_text("ünïcødé ✓ 😀"), "ünïcødé ✓ 😀");
    }

    #[test]
    fn escaped_text_round_trips_through_a_parser() {
        let nasty = "<tag> & \"q\" 'a' \r\n ]]> é";
        let xml = render_response("X", "r", &[XmlNode::text("value", nasty)]);
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let value = doc
            .descendants()
            .find(|n| n.has_tag_name("value"))
            .and_then(|n| n.text())
            .map(str::to_owned);
        assert_eq!(value.as_deref(), Some(nasty));
    }

    #[test]
    fn timestamps_are_iso8601_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_647_600_123);
        assert_eq!(format_timestamp(t), "2026-11-25T23:00:00.123Z");
    }
}

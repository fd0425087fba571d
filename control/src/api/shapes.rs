//! Response shape checking against botocore's EC2 service model, the
//! reference the real clients parse with.
//!
//! botocore's `EC2QueryParser` is forgiving: it silently drops elements it
//! does not know and leaves missing members out, so a typo in a
//! `locationName` yields a response that "parses" yet loses data. This
//! module is strict where botocore is silent: every element must be a
//! member of its shape (matched by `locationName`, else the member name, as
//! `QueryParser._handle_structure` does), list members must be `<item>`
//! (or the member's `locationName`), required members must be present, and
//! scalars must parse as their type (booleans `true`/`false`, integers,
//! ISO 8601 timestamps, enum values).
//!
//! Used by the tests and by debug tooling; never on the request path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::xml::EC2_NAMESPACE;

/// Where botocore keeps the EC2 model, relative to its `data` directory.
const MODEL_IN_DATA_DIR: &str = "ec2/2016-11-15";

/// Values outside a model enum that ec2lab sends on purpose: (shape name,
/// value prefix). botocore does not check enums, so clients accept these;
/// the list keeps such extensions deliberate.
///
/// `AttachmentStatus` `available`: EC2 itself shows an attached internet
/// gateway's attachment as `available`, outside its own model's enum, and
/// clients wait for that word (the Terraform provider's
/// `internetGatewayAttachmentStateAvailable`).
const ENUM_EXTENSIONS: &[(&str, &str)] =
    &[("InstanceType", "lab."), ("AttachmentStatus", "available")];

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ShapesError {
    /// No model file in any of the places looked at.
    #[error("botocore's EC2 model not found (looked in: {})", display_paths(.0))]
    NotFound(Vec<PathBuf>),
    /// The file exists but could not be read or decompressed.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a botocore service model.
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A reference from one shape to another (a member, a list member, an
/// operation's output).
#[derive(Debug, Clone, Deserialize)]
struct ShapeRef {
    shape: String,
    #[serde(rename = "locationName")]
    location_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    members: BTreeMap<String, ShapeRef>,
    member: Option<ShapeRef>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<String>>,
    #[serde(default)]
    flattened: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Operation {
    output: Option<ShapeRef>,
}

/// botocore's EC2 service model, reduced to what response checking needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceModel {
    operations: BTreeMap<String, Operation>,
    shapes: HashMap<String, Shape>,
}

impl ServiceModel {
    /// Loads the model from `service-2.json` or `service-2.json.gz`.
    pub fn from_path(path: &Path) -> Result<Self, ShapesError> {
        let read_err = |source| ShapesError::Read {
            path: path.to_owned(),
            source,
        };
        let raw = std::fs::read(path).map_err(read_err)?;
        let json = if path.extension().is_some_and(|e| e == "gz") {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut text)
                .map_err(read_err)?;
            text
        } else {
            raw
        };
        serde_json::from_slice(&json).map_err(|source| ShapesError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads the model from the first place [`model_candidates`] finds.
    pub fn load() -> Result<Self, ShapesError> {
        let candidates = model_candidates();
        match candidates.iter().find(|p| p.is_file()) {
            Some(path) => Self::from_path(path),
            None => Err(ShapesError::NotFound(candidates)),
        }
    }

    /// Every operation name in the model, sorted.
    pub fn operation_names(&self) -> Vec<&str> {
        self.operations.keys().map(String::as_str).collect()
    }

    /// Checks a successful response body for `action` against the model.
    /// All problems are reported, each as `path: what is wrong`.
    pub fn validate_output(&self, action: &str, xml: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let doc = match roxmltree::Document::parse(xml) {
            Ok(doc) => doc,
            Err(err) => return Err(vec![format!("not well-formed XML: {err}")]),
        };
        let root = doc.root_element();
        let expected_root = format!("{action}Response");
        if root.tag_name().name() != expected_root {
            errors.push(format!(
                "root element is <{}>, expected <{expected_root}>",
                root.tag_name().name()
            ));
        }
        if root.tag_name().namespace() != Some(EC2_NAMESPACE) {
            errors.push(format!(
                "root namespace is {:?}, expected {EC2_NAMESPACE}",
                root.tag_name().namespace()
            ));
        }
        if !root
            .children()
            .any(|c| c.has_tag_name((EC2_NAMESPACE, "requestId")))
        {
            errors.push(format!("/{expected_root}: missing <requestId>"));
        }
        let path = format!("/{expected_root}");
        match self.operations.get(action) {
            None => errors.push(format!("{action} is not an operation of the EC2 model")),
            Some(Operation {
                output: Some(output),
            }) => {
                let mut walker = Walker {
                    model: self,
                    errors: &mut errors,
                };
                walker.structure(&output.shape, root, &path, &["requestId"]);
            }
            Some(Operation { output: None }) => {
                let mut walker = Walker {
                    model: self,
                    errors: &mut errors,
                };
                walker.structure_members(
                    &BTreeMap::new(),
                    &[],
                    "(no output)",
                    root,
                    &path,
                    &["requestId"],
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Where the model is looked for, in order: `$EC2LAB_BOTOCORE_DATA` (a
/// botocore `data` directory, or the model file itself), then the venv that
/// `scripts/python-env` makes under `${EC2LAB_CACHE:-~/.cache/ec2lab}`.
pub fn model_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let in_data_dir = |dir: &Path| {
        let dir = dir.join(MODEL_IN_DATA_DIR);
        [dir.join("service-2.json"), dir.join("service-2.json.gz")]
    };
    if let Some(data) = std::env::var_os("EC2LAB_BOTOCORE_DATA").map(PathBuf::from) {
        if data.is_file() {
            out.push(data);
        } else {
            out.extend(in_data_dir(&data));
        }
    }
    let cache = std::env::var_os("EC2LAB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ec2lab")));
    if let Some(cache) = cache {
        let lib = cache.join("venv/lib");
        let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for python in pythons {
            out.extend(in_data_dir(&python.join("site-packages/botocore/data")));
        }
    }
    out
}

struct Walker<'m, 'e> {
    model: &'m ServiceModel,
    errors: &'e mut Vec<String>,
}

impl<'m> Walker<'m, '_> {
    fn shape(&mut self, name: &str, path: &str) -> Option<&'m Shape> {
        let model: &'m ServiceModel = self.model;
        let shape = model.shapes.get(name);
        if shape.is_none() {
            self.errors
                .push(format!("{path}: shape {name} is not in the model"));
        }
        shape
    }

    fn structure(
        &mut self,
        shape_name: &str,
        node: roxmltree::Node<'_, '_>,
        path: &str,
        ignore: &[&str],
    ) {
        let Some(shape) = self.shape(shape_name, path) else {
            return;
        };
        self.structure_members(
            &shape.members,
            &shape.required,
            shape_name,
            node,
            path,
            ignore,
        );
    }

    fn structure_members(
        &mut self,
        members: &BTreeMap<String, ShapeRef>,
        required: &[String],
        shape_name: &str,
        node: roxmltree::Node<'_, '_>,
        path: &str,
        ignore: &[&str],
    ) {
        self.check_no_text(node, path);
        let mut seen: HashSet<&str> = HashSet::new();
        for child in node.children().filter(roxmltree::Node::is_element) {
            let tag = child.tag_name().name();
            if ignore.contains(&tag) {
                continue;
            }
            let child_path = format!("{path}/{tag}");
            let member = members
                .iter()
                .find(|(name, r)| r.location_name.as_deref().unwrap_or(name) == tag);
            let Some((member_name, member)) = member else {
                self.errors.push(format!(
                    "{child_path}: unknown element, not a member of {shape_name}"
                ));
                continue;
            };
            if !seen.insert(member_name) {
                self.errors
                    .push(format!("{child_path}: member given more than once"));
                continue;
            }
            self.value(&member.shape, child, &child_path);
        }
        for name in required {
            if !seen.contains(name.as_str()) {
                let xml_name = members
                    .get(name)
                    .and_then(|m| m.location_name.as_deref())
                    .unwrap_or(name);
                self.errors.push(format!(
                    "{path}: required member {name} (<{xml_name}>) of {shape_name} is missing"
                ));
            }
        }
    }

    fn value(&mut self, shape_name: &str, node: roxmltree::Node<'_, '_>, path: &str) {
        let Some(shape) = self.shape(shape_name, path) else {
            return;
        };
        match shape.kind.as_str() {
            "structure" => self.structure(shape_name, node, path, &[]),
            "list" => self.list(shape, node, path),
            "map" => self
                .errors
                .push(format!("{path}: map shapes are not checked (EC2 has none)")),
            _ => self.scalar(shape_name, shape, node, path),
        }
    }

    fn list(&mut self, shape: &Shape, node: roxmltree::Node<'_, '_>, path: &str) {
        let Some(member) = &shape.member else {
            self.errors
                .push(format!("{path}: list shape without a member"));
            return;
        };
        if shape.flattened {
            self.errors.push(format!(
                "{path}: flattened lists are not checked (EC2 has none)"
            ));
            return;
        }
        self.check_no_text(node, path);
        let item_name = member.location_name.as_deref().unwrap_or("item");
        for (i, child) in node
            .children()
            .filter(roxmltree::Node::is_element)
            .enumerate()
        {
            let tag = child.tag_name().name();
            let child_path = format!("{path}/{tag}[{}]", i + 1);
            if tag != item_name {
                self.errors
                    .push(format!("{child_path}: list member must be <{item_name}>"));
                continue;
            }
            self.value(&member.shape, child, &child_path);
        }
    }

    fn scalar(
        &mut self,
        shape_name: &str,
        shape: &Shape,
        node: roxmltree::Node<'_, '_>,
        path: &str,
    ) {
        if let Some(child) = node.children().find(roxmltree::Node::is_element) {
            self.errors.push(format!(
                "{path}: {} value must be text, found <{}>",
                shape.kind,
                child.tag_name().name()
            ));
            return;
        }
        let text: String = node.children().filter_map(|c| c.text()).collect();
        let problem = match shape.kind.as_str() {
            "string" => match &shape.enum_values {
                Some(values)
                    if !values.contains(&text)
                        && !ENUM_EXTENSIONS
                            .iter()
                            .any(|(s, prefix)| *s == shape_name && text.starts_with(prefix)) =>
                {
                    Some(format!(
                        "'{text}' is not a {shape_name} (one of {})",
                        values.join(", ")
                    ))
                }
                _ => None,
            },
            "boolean" => (text != "true" && text != "false")
                .then(|| format!("'{text}' is not a boolean (true or false)")),
            "integer" => text
                .parse::<i32>()
                .err()
                .map(|_| format!("'{text}' is not a 32-bit integer")),
            "long" => text
                .parse::<i64>()
                .err()
                .map(|_| format!("'{text}' is not a 64-bit integer")),
            "double" | "float" => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .is_none()
                .then(|| format!("'{text}' is not a finite number")),
            "timestamp" => humantime::parse_rfc3339(&text)
                .err()
                .map(|_| format!("'{text}' is not an ISO 8601 UTC timestamp")),
            "blob" => (!text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r')
            }))
            .then(|| "blob is not base64".to_owned()),
            other => Some(format!("unknown shape type {other}")),
        };
        if let Some(problem) = problem {
            self.errors.push(format!("{path}: {problem}"));
        }
    }

    fn check_no_text(&mut self, node: roxmltree::Node<'_, '_>, path: &str) {
        let stray = node
            .children()
            .filter(|c| c.is_text())
            .filter_map(|c| c.text())
            .any(|t| !t.trim().is_empty());
        if stray {
            self.errors
                .push(format!("{path}: text inside a structure or list"));
        }
    }
}

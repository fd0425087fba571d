//! The `ec2lab` command-line client's side of the EC2 Query protocol: a
//! signed form POST to the endpoint, and the XML answer turned into JSON
//! the way the aws CLI presents it (element names capitalised, `<item>`
//! lists as arrays), so `--output json` looks like `aws ec2 ...`.

use std::time::SystemTime;

use crate::api::sigv4::{self, Credentials};

/// Errors talking to the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint URL is not `http://host:port`.
    #[error("endpoint {0} is not of the form http://HOST:PORT")]
    Endpoint(String),
    /// No answer.
    #[error("cannot reach {endpoint}: {detail} (is `ec2lab serve` running?)")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The answer is not XML.
    #[error("{action}: the endpoint answered something that is not XML: {detail}")]
    Malformed {
        /// The action.
        action: String,
        /// What was wrong.
        detail: String,
    },
    /// An EC2 error response.
    #[error("An error occurred ({code}) when calling the {action} operation: {message}")]
    Api {
        /// The action.
        action: String,
        /// EC2 error code.
        code: String,
        /// Its message.
        message: String,
    },
}

/// A client of one endpoint.
pub struct Client {
    endpoint: String,
    host: String,
    credentials: Credentials,
    region: String,
    agent: ureq::Agent,
}

/// Form-encodes parameters.
fn form(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

impl Client {
    /// A client of `endpoint` (`http://127.0.0.1:8787`).
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        region: &str,
    ) -> Result<Self, ClientError> {
        let host = endpoint
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| ClientError::Endpoint(endpoint.to_string()))?
            .to_string();
        Ok(Self {
            endpoint: format!("http://{host}/"),
            host,
            credentials,
            region: region.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(60))
                .build(),
        })
    }

    /// Calls `action` with `params`; returns the response as JSON.
    pub fn call(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let mut all = vec![
            ("Action".to_string(), action.to_string()),
            ("Version".to_string(), "2016-11-15".to_string()),
        ];
        all.extend(params.iter().cloned());
        let body = form(&all);
        let content_type = (
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        );
        let request = sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: std::slice::from_ref(&content_type),
            body: body.as_bytes(),
        };
        let signed = sigv4::sign_request(
            &request,
            &self.host,
            &self.credentials,
            (&self.region, "ec2"),
            SystemTime::now(),
        );
        let mut req = self
            .agent
            .post(&self.endpoint)
            .set(&content_type.0, &content_type.1);
        for (k, v) in &signed {
            if k != "host" {
                req = req.set(k, v);
            }
        }
        let text = match req.send_string(&body) {
            Ok(resp) => resp.into_string(),
            Err(ureq::Error::Status(_, resp)) => resp.into_string(),
            Err(e) => {
                return Err(ClientError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    detail: e.to_string(),
                })
            }
        }
        .map_err(|e| ClientError::Malformed {
            action: action.to_string(),
            detail: e.to_string(),
        })?;
        parse_response(action, &text)
    }
}

/// Parses an EC2 Query response (or error) into aws-CLI-style JSON.
pub fn parse_response(action: &str, xml: &str) -> Result<serde_json::Value, ClientError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| ClientError::Malformed {
        action: action.to_string(),
        detail: e.to_string(),
    })?;
    let root = doc.root_element();
    if root.tag_name().name() == "Response" {
        let error = root
            .descendants()
            .find(|n| n.has_tag_name("Error"))
            .ok_or_else(|| ClientError::Malformed {
                action: action.to_string(),
                detail: "an error response without <Error>".to_string(),
            })?;
        let field = |name: &str| {
            error
                .children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_string()
        };
        return Err(ClientError::Api {
            action: action.to_string(),
            code: field("Code"),
            message: field("Message"),
        });
    }
    let mut out = serde_json::Map::new();
    for child in root.children().filter(|n| n.is_element()) {
        if child.has_tag_name("requestId") {
            continue;
        }
        out.insert(capitalise(child.tag_name().name()), to_json(child));
    }
    Ok(serde_json::Value::Object(out))
}

/// `instancesSet` -> `Instances`, `instanceId` -> `InstanceId`: botocore's
/// names for EC2's wire names, close enough for display.
fn capitalise(name: &str) -> String {
    let name = name.strip_suffix("Set").map_or(name.to_string(), |base| {
        if base.ends_with('s') {
            base.to_string()
        } else {
            format!("{base}s")
        }
    });
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn to_json(node: roxmltree::Node<'_, '_>) -> serde_json::Value {
    let elements: Vec<_> = node.children().filter(|n| n.is_element()).collect();
    if elements.is_empty() {
        return serde_json::Value::String(node.text().unwrap_or_default().to_string());
    }
    if elements.iter().all(|n| n.has_tag_name("item")) {
        return serde_json::Value::Array(elements.into_iter().map(to_json).collect());
    }
    let mut map = serde_json::Map::new();
    for child in elements {
        map.insert(capitalise(child.tag_name().name()), to_json(child));
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_become_cli_style_json() {
        let xml = r#"<?xml version="1.0"?><DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
            <requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId>
            <instancesSet><item><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState></item></instancesSet>
            </item></reservationSet></DescribeInstancesResponse>"#;
        let v = parse_response("DescribeInstances", xml).expect("parses");
        assert_eq!(v["Reservations"][0]["Instances"][0]["InstanceId"], "i-1");
        assert_eq!(
            v["Reservations"][0]["Instances"][0]["InstanceState"]["Name"],
            "running"
        );
    }

    #[test]
    fn error_responses_become_errors_with_the_code() {
        let xml = r#"<?xml version="1.0"?><Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code>
            <Message>The instance ID 'i-1' does not exist</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        let e = parse_response("StopInstances", xml).expect_err("error");
        assert!(
            e.to_string().contains("(InvalidInstanceID.NotFound)"),
            "{e}"
        );
    }
}

//! The EC2 Instance Connect API on the EC2 endpoint: AWS JSON 1.1, the
//! operation in `X-Amz-Target: AWSEC2InstanceConnectService.<Operation>`,
//! requests signed for the service `ec2-instance-connect`. So
//! `aws ec2-instance-connect send-ssh-public-key --endpoint-url <ec2lab>`
//! and boto3's `ec2-instance-connect` client work against the same port
//! as EC2.
//!
//! Only `SendSSHPublicKey` is served; the serial-console variant answers
//! that the serial console is not available, as EC2 does in an account
//! where it was never enabled.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::actions::AppState;
use crate::instance_connect::SendKeyError;

/// The header naming the operation.
pub const TARGET_HEADER: &str = "x-amz-target";

/// The prefix of every Instance Connect operation in [`TARGET_HEADER`].
pub const TARGET_PREFIX: &str = "AWSEC2InstanceConnectService.";

/// The SigV4 service name its requests are signed for.
pub const SIGNING_NAME: &str = "ec2-instance-connect";

/// What the service answers with.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The operation a request names, when it is one for this service.
pub fn operation(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TARGET_HEADER)?
        .to_str()
        .ok()?
        .strip_prefix(TARGET_PREFIX)
}

/// An error as the JSON protocol carries it: botocore reads `__type` for
/// the code and `message` for the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The exception's name.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl JsonError {
    /// An error with `code` as its `__type`.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        JsonError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A caller's mistake in the request's parameters.
    fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgsException", message)
    }

    /// The response body.
    pub fn body(&self) -> String {
        json!({ "__type": self.code, "message": self.message }).to_string()
    }
}

/// SendSSHPublicKey's input, as the service model names its members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendSshPublicKey {
    #[serde(rename = "InstanceId")]
    instance_id: String,
    #[serde(rename = "InstanceOSUser")]
    instance_os_user: String,
    #[serde(rename = "SSHPublicKey")]
    ssh_public_key: String,
    #[serde(rename = "AvailabilityZone")]
    availability_zone: Option<String>,
}

/// Runs `operation` with the JSON `body`; returns the JSON to send back
/// with 200. Blocking (it reads the store): call it off the async runtime.
pub fn dispatch(
    app: &Arc<AppState>,
    operation: &str,
    body: &[u8],
    request_id: &str,
) -> Result<String, JsonError> {
    match operation {
        "SendSSHPublicKey" => send_ssh_public_key(app, body, request_id),
        "SendSerialConsoleSSHPublicKey" => Err(JsonError::new(
            StatusCode::BAD_REQUEST,
            "SerialConsoleAccessDisabledException",
            "Your requested instance type does not support serial console access in ec2lab",
        )),
        other => Err(JsonError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!(
                "{TARGET_PREFIX}{} is not an operation of this service",
                other.escape_debug()
            ),
        )),
    }
}

fn send_ssh_public_key(
    app: &Arc<AppState>,
    body: &[u8],
    request_id: &str,
) -> Result<String, JsonError> {
    let input: SendSshPublicKey = serde_json::from_slice(body).map_err(|e| {
        JsonError::new(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            format!("The request is not a SendSSHPublicKey input: {e}"),
        )
    })?;
    // The model's own bounds on the instance id, checked before the store.
    let id = &input.instance_id;
    let id_ok = (10..=32).contains(&id.len())
        && id.strip_prefix("i-").is_some_and(|hex| {
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
    if !id_ok {
        return Err(JsonError::invalid_args(format!(
            "InstanceId {:?} is not an instance id",
            id.chars().take(40).collect::<String>()
        )));
    }
    app.lab
        .send_ssh_public_key(
            id,
            &input.instance_os_user,
            &input.ssh_public_key,
            input.availability_zone.as_deref(),
        )
        .map_err(|e| match e {
            SendKeyError::Invalid(e) => JsonError::invalid_args(e.to_string()),
            SendKeyError::WrongZone { .. } => JsonError::invalid_args(e.to_string()),
            SendKeyError::NotFound(_) => JsonError::new(
                StatusCode::BAD_REQUEST,
                "EC2InstanceNotFoundException",
                e.to_string(),
            ),
            SendKeyError::NotRunning(..) => JsonError::new(
                StatusCode::BAD_REQUEST,
                "EC2InstanceStateInvalidException",
                e.to_string(),
            ),
            SendKeyError::Db(db) => {
                log::error!("{request_id} SendSSHPublicKey: {db}");
                JsonError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceException",
                    "An internal error occurred",
                )
            }
        })?;
    Ok(json!({ "RequestId": request_id, "Success": true }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operation_comes_from_the_target_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(operation(&headers), None);
        headers.insert(
            TARGET_HEADER,
            "AWSEC2InstanceConnectService.SendSSHPublicKey"
                .parse()
                .expect("header"),
        );
        assert_eq!(operation(&headers), Some("SendSSHPublicKey"));
        headers.insert(
            TARGET_HEADER,
            "DynamoDB_20120810.GetItem".parse().expect("header"),
        );
        assert_eq!(operation(&headers), None);
    }

    #[test]
    fn errors_are_shaped_for_botocore() {
        let e = JsonError::invalid_args("bad \"user\"");
        let v: serde_json::Value = serde_json::from_str(&e.body()).expect("json");
        assert_eq!(v["__type"], "InvalidArgsException");
        assert_eq!(v["message"], "bad \"user\"");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}

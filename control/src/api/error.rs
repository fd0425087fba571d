//! EC2 API errors: the code/message pair every client branches on, the
//! HTTP status that goes with it, and the `<Response><Errors>` document.
//!
//! Clients match on the code string (`InvalidInstanceID.NotFound`), so codes
//! are spelled exactly as EC2 spells them; messages follow EC2's wording
//! where it is well known, because scripts sometimes grep them too.
//!
//! The domain's errors (repository, lifecycle, instance operations) become
//! EC2 errors here and nowhere else, through `From`, so a handler only
//! writes `?` and every action answers one domain failure the same way.

use std::borrow::Cow;

use axum::http::StatusCode;

use super::xml;
use crate::db::DbError;
use crate::images::RegisterError;
use crate::instances::InstanceError;
use crate::lifecycle::LabError;
use crate::model::filter::FilterError;
use crate::model::ids::IdKind;

/// An error as EC2 reports it. Rendered by [`Ec2Error::to_xml`]; botocore's
/// `EC2QueryParser` reads `Errors/Error/Code`, `Message` and `RequestID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}{}", detail_suffix(.detail.as_deref()))]
pub struct Ec2Error {
    code: Cow<'static, str>,
    message: String,
    status: StatusCode,
    /// What really failed behind an `InternalError`: shown in the server's
    /// log line (which carries the request id), never sent to the client.
    detail: Option<String>,
}

fn detail_suffix(detail: Option<&str>) -> String {
    detail.map(|d| format!(" ({d})")).unwrap_or_default()
}

impl Ec2Error {
    /// An error with any code; prefer the named constructors so codes stay
    /// spelled one way.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            status,
            detail: None,
        }
    }

    /// The EC2 error code, e.g. `InvalidParameterValue`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status the error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What failed behind an `InternalError`, for the log only.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The EC2 error document (note `RequestID`, not `requestId` as in
    /// successful responses: botocore looks for exactly that).
    pub fn to_xml(&self, request_id: &str) -> String {
        xml::render_error(&self.code, &self.message, request_id)
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    // --- Protocol and authentication -------------------------------------

    /// The signature or access key is wrong. EC2 answers 401.
    pub fn auth_failure(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthFailure", message)
    }

    /// The request's signing time is outside the allowed skew.
    pub fn request_expired(message: impl Into<String>) -> Self {
        Self::bad_request("RequestExpired", message)
    }

    /// The signer has no permission for the action.
    pub fn unauthorized_operation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
    }

    /// `DryRun=true` on a request that would have succeeded. 412 is what EC2
    /// sends; the CLI turns it into its familiar "DryRunOperation" message.
    pub fn dry_run_operation() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    /// No `Action` parameter at all.
    pub fn missing_action() -> Self {
        Self::bad_request(
            "MissingAction",
            "The request must contain the parameter Action",
        )
    }

    /// An action name that is not in EC2's model.
    pub fn invalid_action(action: &str) -> Self {
        Self::bad_request(
            "InvalidAction",
            format!("The action {action} is not valid for this web service."),
        )
    }

    /// An action EC2 has but ec2lab does not implement. Never answer those
    /// with an empty success: a client would believe something happened.
    pub fn unsupported_action(action: &str) -> Self {
        Self::bad_request(
            "UnsupportedOperation",
            format!("The action {action} is not supported by ec2lab."),
        )
    }

    /// A placement group the account does not have.
    pub fn placement_group_unknown(group: &str) -> Self {
        Self::bad_request(
            "InvalidPlacementGroup.Unknown",
            format!("The Placement Group '{group}' is unknown."),
        )
    }

    /// An operation that exists but cannot be done to this resource here.
    pub fn unsupported_operation(message: impl Into<String>) -> Self {
        Self::bad_request("UnsupportedOperation", message)
    }

    /// The operation is forbidden on this resource (e.g. termination
    /// protection).
    pub fn operation_not_permitted(message: impl Into<String>) -> Self {
        Self::bad_request("OperationNotPermitted", message)
    }

    /// The body is larger than the server accepts. EC2 has no documented
    /// code for this; the name says what happened and the status is HTTP's.
    pub fn request_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("The request body exceeds {limit} bytes."),
        )
    }

    /// A bug or an unexpected host failure; the details go to the log, not
    /// to the client.
    pub fn internal_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "An internal error has occurred.",
        )
    }

    /// [`Ec2Error::internal_error`] for a domain failure: the client sees
    /// the same answer, the server's log line says what failed.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self {
            detail: Some(detail.to_string()),
            ..Self::internal_error()
        }
    }

    // --- Parameters ------------------------------------------------------

    /// A required parameter is absent.
    pub fn missing_parameter(name: &str) -> Self {
        Self::bad_request(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    /// A parameter has a value that cannot be right.
    pub fn invalid_parameter_value(message: impl Into<String>) -> Self {
        Self::bad_request("InvalidParameterValue", message)
    }

    /// Two parameters that cannot be used together.
    pub fn invalid_parameter_combination(message: impl Into<String>) -> Self {
        Self::bad_request("InvalidParameterCombination", message)
    }

    /// A parameter the action does not take.
    pub fn unknown_parameter(name: &str) -> Self {
        Self::bad_request(
            "UnknownParameter",
            format!("The parameter {name} is not recognized"),
        )
    }

    /// More tags than a resource may have (EC2: 50 per resource).
    pub fn tag_limit_exceeded(message: impl Into<String>) -> Self {
        Self::bad_request("TagLimitExceeded", message)
    }

    // --- Resources -------------------------------------------------------

    /// An instance id that is well formed but unknown.
    pub fn instance_not_found(id: &str) -> Self {
        Self::bad_request(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        )
    }

    /// A string that is not an instance id at all.
    pub fn instance_id_malformed(id: &str) -> Self {
        Self::bad_request(
            "InvalidInstanceID.Malformed",
            format!("Invalid id: \"{id}\""),
        )
    }

    /// The instance is not in a state that allows the operation.
    pub fn incorrect_instance_state(id: &str, state: &str, action: &str) -> Self {
        Self::bad_request(
            "IncorrectInstanceState",
            format!(
                "The instance '{id}' is not in a state from which it can be {action}. \
                 Its current state is '{state}'."
            ),
        )
    }

    /// An image id that is well formed but unknown.
    pub fn image_not_found(id: &str) -> Self {
        Self::bad_request(
            "InvalidAMIID.NotFound",
            format!("The image id '[{id}]' does not exist"),
        )
    }

    /// A string that is not an image id.
    pub fn image_id_malformed(id: &str) -> Self {
        Self::bad_request(
            "InvalidAMIID.Malformed",
            format!("Invalid id: \"{id}\" (expecting \"ami-...\")"),
        )
    }

    /// A key pair name that does not exist.
    pub fn key_pair_not_found(name: &str) -> Self {
        Self::bad_request(
            "InvalidKeyPair.NotFound",
            format!("The key pair '{name}' does not exist"),
        )
    }

    /// A key pair name that is already taken.
    pub fn key_pair_duplicate(name: &str) -> Self {
        Self::bad_request(
            "InvalidKeyPair.Duplicate",
            format!("The keypair '{name}' already exists."),
        )
    }

    /// Imported key material that is not a usable public key.
    pub fn key_pair_format(message: impl Into<String>) -> Self {
        Self::bad_request("InvalidKeyPair.Format", message)
    }

    /// Instance type names that do not exist.
    pub fn invalid_instance_type(names: &[&str]) -> Self {
        Self::bad_request(
            "InvalidInstanceType",
            format!(
                "The following supplied instance types do not exist: [{}]",
                names.join(", ")
            ),
        )
    }

    /// The host cannot fit the requested instances. EC2 lists this among its
    /// server errors (HTTP 500), so SDKs retry it as they would on EC2.
    pub fn insufficient_instance_capacity(instance_type: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InsufficientInstanceCapacity",
            format!("We currently do not have sufficient {instance_type} capacity on this host."),
        )
    }
}

/// The repository's errors as EC2 reports them.
impl From<DbError> for Ec2Error {
    fn from(e: DbError) -> Self {
        let bad = |code: &'static str, message: String| Self::bad_request(code, message);
        match &e {
            DbError::NotFound { kind, ids } => {
                let ids = ids.join(", ");
                let message = match kind {
                    IdKind::Instance => format!("The instance IDs '{ids}' do not exist"),
                    IdKind::Image | IdKind::Kernel => {
                        format!("The image id '[{ids}]' does not exist")
                    }
                    IdKind::KeyPair => format!("The key pair '{ids}' does not exist"),
                    IdKind::Vpc => format!("The vpc ID '{ids}' does not exist"),
                    IdKind::Subnet => format!("The subnet ID '{ids}' does not exist"),
                    IdKind::SecurityGroup => format!("The security group '{ids}' does not exist"),
                    IdKind::NetworkInterface => {
                        format!("The networkInterface ID '{ids}' does not exist")
                    }
                    IdKind::SecurityGroupRule => {
                        format!("The security group rule ID '{ids}' does not exist")
                    }
                    IdKind::RouteTable => format!("The routeTable ID '{ids}' does not exist"),
                    IdKind::NetworkAcl => format!("The networkAcl ID '{ids}' does not exist"),
                    IdKind::InternetGateway => {
                        format!("The internetGateway ID '{ids}' does not exist")
                    }
                    _ => e.to_string(),
                };
                bad(kind.not_found_code(), message)
            }
            DbError::Duplicate { kind, name } => match kind {
                IdKind::KeyPair => Self::key_pair_duplicate(name),
                IdKind::Image | IdKind::Kernel => bad(
                    "InvalidAMIName.Duplicate",
                    format!("AMI name {name} is already in use by AMI"),
                ),
                _ => bad("InvalidParameterValue", e.to_string()),
            },
            DbError::IncorrectState { .. } | DbError::StateConflict { .. } => {
                bad("IncorrectInstanceState", e.to_string())
            }
            DbError::Conflict { .. } => bad("InvalidParameterValue", e.to_string()),
            DbError::InvalidId(id) => bad("InvalidID", format!("The ID '{id}' is not valid")),
            DbError::TagLimitExceeded { .. } => Self::tag_limit_exceeded(e.to_string()),
            DbError::InvalidQuery(f) => bad(f.code(), f.to_string()),
            DbError::Ipam(i) => bad(i.code(), i.to_string()),
            DbError::Address(a) => bad(a.code(), a.to_string()),
            DbError::SecurityGroup(g) => bad(g.code(), g.to_string()),
            _ => Self::internal(e),
        }
    }
}

/// Filters and pages the model refused (unknown names, too many values,
/// bad tokens), with the code the model gives each.
impl From<FilterError> for Ec2Error {
    fn from(e: FilterError) -> Self {
        Self::bad_request(e.code(), e.to_string())
    }
}

/// RegisterImage's refusals: the caller named a wrong directory.
impl From<RegisterError> for Ec2Error {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Db(e) => e.into(),
            RegisterError::NotInStore | RegisterError::Image(_) => {
                Self::invalid_parameter_value(e.to_string())
            }
        }
    }
}

/// The lifecycle's errors: a refused transition is the client's mistake, a
/// failed boot is the host's.
impl From<LabError> for Ec2Error {
    fn from(e: LabError) -> Self {
        match e {
            LabError::Db(e) => e.into(),
            LabError::Transition(t) => Self::bad_request(t.code(), t.to_string()),
            LabError::Boot(_) => Self::internal(e),
        }
    }
}

/// A group change: the store's refusals as EC2 codes; a change stored but
/// not enforced is the host's failure.
impl From<crate::groups::GroupError> for Ec2Error {
    fn from(e: crate::groups::GroupError) -> Self {
        match e {
            crate::groups::GroupError::Db(e) => e.into(),
            crate::groups::GroupError::NotApplied(_) => Self::internal(e),
        }
    }
}

/// Elastic IP operations: the store's refusals as EC2 codes.
impl From<crate::addresses::AddressOpError> for Ec2Error {
    fn from(e: crate::addresses::AddressOpError) -> Self {
        use crate::addresses::AddressOpError;
        match e {
            AddressOpError::Db(e) => e.into(),
            AddressOpError::NotApplied(_) => Self::internal(e),
        }
    }
}

/// The instance operations' rules, each with the code EC2 gives it.
impl From<InstanceError> for Ec2Error {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::Lab(e) => e.into(),
            InstanceError::Db(e) => e.into(),
            InstanceError::Groups(e) => e.into(),
            InstanceError::NoNetworkInterface(_) => Self::invalid_parameter_value(e.to_string()),
            InstanceError::TerminationProtected(_) | InstanceError::StopProtected(_) => {
                Self::operation_not_permitted(e.to_string())
            }
            InstanceError::ImageNotFound(id) => Self::image_not_found(&id),
            InstanceError::HibernationNotConfigured(_) => {
                Self::bad_request("UnsupportedHibernationConfiguration", e.to_string())
            }
            InstanceError::InvalidAvailabilityZone(_)
            | InstanceError::SubnetInAnotherZone { .. }
            | InstanceError::UnknownInstanceType(_) => Self::invalid_parameter_value(e.to_string()),
            InstanceError::AddressForMany | InstanceError::CreditsForSteadyType(_) => {
                Self::invalid_parameter_combination(e.to_string())
            }
            InstanceError::CreditsNotSupported { .. } => {
                Self::bad_request("InstanceCreditSpecification.NotSupported", e.to_string())
            }
            InstanceError::IdempotentParameterMismatch(_) => {
                Self::bad_request("IdempotentParameterMismatch", e.to_string())
            }
            InstanceError::InsufficientCapacity(instance_type) => {
                Self::insufficient_instance_capacity(&instance_type)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failure_is_401_and_dry_run_is_412() {
        assert_eq!(
            Ec2Error::auth_failure("x").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Ec2Error::dry_run_operation().status(),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            Ec2Error::unauthorized_operation("x").status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Ec2Error::internal_error().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn error_xml_has_code_message_and_request_id_in_ec2_layout() {
        let xml = Ec2Error::instance_not_found("i-0123<&>").to_xml("req-1");
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
             <Code>InvalidInstanceID.NotFound</Code>\
             <Message>The instance ID &apos;i-0123&lt;&amp;&gt;&apos; does not exist</Message>\
             </Error></Errors><RequestID>req-1</RequestID></Response>"
        );
    }
}

//! AWS Signature Version 4 verification of incoming requests.

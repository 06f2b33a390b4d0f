//! The pure core of cassette's decisions, shared by the sidecar (which enforces) and the
//! operator (which validates AgentSessions at admission).
//!
//! Everything here is a function over bytes and structs: no sockets, no files, no clocks
//! (the current time is an argument). The I/O lives in the crates that call this one.
//!
//! - [`authority`]: the verified upstream name every decision uses, and the 421 check of a
//!   request's own Host, `:authority` and absolute-form authority against it;
//! - [`batch`]: Google batch bodies, read into sub-requests that are classified and decided
//!   one by one;
//! - [`classify`]: which Google service and IAM permission an HTTP request or gRPC call uses;
//! - [`credential`]: brokered credentials — the hosts an entry is for, and its placeholder
//!   found and swapped in the entry's presentation;
//! - [`code_host`]: ref changes through code-host REST APIs (pull-request merges, contents
//!   and refs APIs), so that `gitRef` rules hold for them as for pushes;
//! - [`git`]: git smart-HTTP requests, pkt-line parsing, refused-push reports;
//! - [`policy`]: the AgentSession's ordered rules and expiry, evaluated to a [`policy::Decision`];
//! - [`mask`]: streaming secret masking with keyed fingerprints;
//! - [`pack`]: git packs read as they stream, object by object, blobs and messages masked,
//!   masks kept per object and path;
//! - [`path`]: the one request-path normaliser that git detection, classification and policy share;
//! - [`refusal`]: refusals in the client's protocol (gRPC status, Google JSON errors, OCI
//!   errors, git reports);
//! - [`validate`]: one check of an AgentSession spec, with the JSON path of every bad field.

pub mod authority;
pub mod batch;
pub mod classify;
pub mod code_host;
pub mod credential;
pub mod git;
pub mod glob;
pub mod mask;
pub mod pack;
pub mod path;
pub mod policy;
pub mod refusal;
pub mod sink;
pub mod validate;

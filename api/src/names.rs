//! Names shared by the operator, the sidecar, the CLI and the chart: labels, annotations,
//! ports, the sidecar's UID and the trust-store variables set in agent containers.

/// The API group of cassette's resources.
pub const GROUP: &str = "cassette.dev";

/// Pod label naming the AgentSession (in the pod's namespace) the pod records into.
pub const SESSION_LABEL: &str = "cassette.dev/session";

/// Namespace label: every pod in the namespace must name a session, or it is refused.
pub const ENFORCE_LABEL: &str = "cassette.dev/enforce";

/// Pod annotation recording what the injector did, which also makes injection idempotent.
pub const INJECTED_ANNOTATION: &str = "cassette.dev/injected";

/// Port of the captured-outbound listener (and explicit HTTP CONNECT proxy).
pub const CAPTURE_PORT: u16 = 15001;

/// Port of the metadata shim that answers the agent's metadata-server requests.
pub const METADATA_PORT: u16 = 15080;

/// Port of the DNS proxy: the capture rules redirect every DNS query (UDP and TCP port 53)
/// from agent UIDs here; the sidecar records it and forwards it to the cluster's resolver.
pub const DNS_PORT: u16 = 15053;

/// Port of the inbound listener: connections into the pod (other than to the sidecar's own
/// ports) are redirected here, recorded both ways and handed to the agent's listener.
pub const INBOUND_PORT: u16 = 15006;

/// Port of the sidecar's admin server: /metrics, /healthz, /readyz.
pub const ADMIN_PORT: u16 = 15090;

/// The sidecar's UID; the capture rules exclude it and nothing else.
pub const SIDECAR_UID: u32 = 1337;

/// Body size recorded per message when the AgentSession does not say.
pub const DEFAULT_MAX_BODY_BYTES: i64 = 1024 * 1024;

/// Environment variables that point agent tools at the session CA bundle (system roots plus
/// the session CA). All but NODE_EXTRA_CA_CERTS replace the tool's trust store, hence the
/// bundle carries the system roots too.
pub const CA_BUNDLE_ENV: [&str; 7] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// The key of the fingerprint Secret that the operator makes for a session that names none.
pub const FINGERPRINT_SECRET_KEY: &str = "key";

/// The name of the fingerprint Secret that the operator makes, in the session's namespace, for
/// a session with no `spec.masking.fingerprintKey`. Names too long for a Secret keep their
/// first 200 characters and add a hash of the whole name.
pub fn default_fingerprint_secret(session: &str) -> String {
    const PREFIX: &str = "cassette-fingerprint-";
    if PREFIX.len() + session.len() <= 253 {
        return format!("{PREFIX}{session}");
    }
    // FNV-1a: stable across builds and platforms, which is all a name needs.
    let hash = session.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let head: String = session.chars().take(200).collect();
    format!("{PREFIX}{}-{hash:016x}", head.trim_end_matches(['-', '.']))
}

/// Sidecar variable holding the brokered-credential table: a JSON array of
/// [`crate::BrokeredCredential`], one entry per `spec.credentials` entry.
pub const CREDENTIALS_ENV: &str = "CASSETTE_CREDENTIALS";

/// Where the injector mounts each credential's Secret key in the sidecar:
/// `<CREDENTIALS_DIR>/<entry name>/value`.
pub const CREDENTIALS_DIR: &str = "/var/run/cassette/credentials";

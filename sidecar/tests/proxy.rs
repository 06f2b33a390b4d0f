//! The sidecar as an explicit proxy (`HTTPS_PROXY`), no iptables needed: TLS interception
//! with upstream verification, HTTP/1.1 and HTTP/2, the metadata shim and the credential
//! swap, refusals, and the recording it leaves — read back and verified.
//!
//! Real clients (`curl`), a real TLS upstream and a fake metadata server run on loopback.
//! The netns e2e (crate `cassette-e2e`) covers transparent capture.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const REAL_TOKEN: &str = "ya29.real-token-from-the-metadata-server";
/// A Google API key, sent gzip-compressed by the upstream.
const GZIPPED_KEY: &str = "AIzaSyC0mpr3ss3dS3cr3tK3yF0rT3st1ngXyZ01";

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What the upstream saw: (host, authorization, HTTP version).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A TLS listener on loopback for `names`, with a leaf from `ca`, offering `alpn`.
async fn tls_listener(
    ca: &TestCa,
    names: &[&str],
    alpn: &[&[u8]],
) -> (tokio_rustls::TlsAcceptor, TcpListener, SocketAddr) {
    let (chain, key) = ca.leaf(names);
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (acceptor, listener, addr)
}

/// A TLS upstream (h2 and http/1.1) that echoes what it received as JSON.
async fn upstream(ca: &TestCa, names: &[&str], seen: Seen) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(ca, names, &[b"h2", b"http/1.1"]).await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get("host")
                                    .map(|h| h.to_str().unwrap().to_string())
                            })
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let version = format!("{:?}", req.version());
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .unwrap()
                            .push((host.clone(), auth.clone(), version.clone()));
                        if let Some(n) = path.strip_prefix("/bytes/") {
                            // A download of n bytes.
                            let n: usize = n.parse().unwrap();
                            return Ok(Response::new(Full::new(Bytes::from("d".repeat(n)))));
                        }
                        if path == "/gz" {
                            // A compressed body carrying a secret: the wire stays gzip.
                            use std::io::Write;
                            let mut gz = flate2::write::GzEncoder::new(
                                Vec::new(),
                                flate2::Compression::default(),
                            );
                            gz.write_all(format!("{{\"key\": \"{GZIPPED_KEY}\"}}").as_bytes())
                                .unwrap();
                            let mut r = Response::new(Full::new(Bytes::from(gz.finish().unwrap())));
                            r.headers_mut()
                                .insert("content-encoding", "gzip".parse().unwrap());
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            return Ok(r);
                        }
                        let json = serde_json::json!({
                            "host": host, "path": path, "version": version,
                            "body_len": body.len(),
                            "message": "the upstream's reply",
                        });
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                            json.to_string(),
                        ))))
                    }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    addr
}

/// A GKE metadata server that hands out the real token.
async fn fake_metadata() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().trim_start_matches("/computeMetadata/v1/");
                    let body = match path {
                        "project/project-id" => "acme-agents".to_string(),
                        "project/numeric-project-id" => "123456789".to_string(),
                        "instance/zone" => "projects/123456789/zones/europe-west1-b".to_string(),
                        "instance/service-accounts/default/email" => {
                            "agent@acme-agents.iam.gserviceaccount.com".to_string()
                        }
                        "instance/service-accounts/default/scopes" => {
                            "https://www.googleapis.com/auth/cloud-platform".to_string()
                        }
                        p if p.ends_with("/token") => serde_json::json!({
                            "access_token": REAL_TOKEN, "expires_in": 3599, "token_type": "Bearer"
                        })
                        .to_string(),
                        _ => {
                            let mut r = Response::new(Full::new(Bytes::from("not found")));
                            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            return Ok::<_, hyper::Error>(r);
                        }
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut()
                        .insert("metadata-flavor", "Google".parse().unwrap());
                    Ok(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Sidecar {
    child: Child,
    dir: tempfile::TempDir,
    capture: u16,
    metadata: u16,
    admin: u16,
}

impl Sidecar {
    fn start(extra: &[String], metadata_host: Option<SocketAddr>) -> Self {
        Self::start_with(extra, metadata_host, |_| {})
    }

    /// Start with `prepare` run on the spool directory first (made, empty).
    fn start_with(
        extra: &[String],
        metadata_host: Option<SocketAddr>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        Self::launch(&[], extra, metadata_host, prepare)
    }

    /// Start through `wrapper` (a command that execs the one after it, such as `prlimit`).
    fn launch(
        wrapper: &[&str],
        extra: &[String],
        metadata_host: Option<SocketAddr>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        prepare(&spool);
        let (capture, metadata, admin) = (free_port(), free_port(), free_port());
        let binary = env!("CARGO_BIN_EXE_cassette-sidecar");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("run")
            .args([
                "--session",
                "proxy-test",
                "--namespace",
                "tests",
                "--pod",
                "p",
                "--pod-uid",
                "u",
            ])
            .arg(format!(
                "--sink=file://{}",
                dir.path().join("sink").display()
            ))
            .arg(format!("--spool={}", dir.path().join("spool").display()))
            .arg(format!(
                "--ca-bundle={}",
                dir.path().join("bundle.pem").display()
            ))
            .arg(format!("--capture-addr=127.0.0.1:{capture}"))
            .arg(format!("--metadata-addr=127.0.0.1:{metadata}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            // The DNS and inbound listeners too, on ports of their own: sidecars of other
            // tests (and of the machine) may hold the defaults.
            .arg(format!("--dns-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--inbound-addr=127.0.0.1:{}", free_port()))
            .arg("--log-format=pretty")
            .args(extra)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sidecar.log")).unwrap());
        match metadata_host {
            Some(addr) => {
                cmd.env("GCE_METADATA_HOST", addr.to_string());
            }
            None => {
                cmd.arg("--metadata=off");
            }
        }
        let child = cmd.spawn().unwrap();
        let sidecar = Self {
            child,
            dir,
            capture,
            metadata,
            admin,
        };
        sidecar.wait_ready();
        sidecar
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{}/readyz", self.admin)])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sidecar not ready; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    /// curl through the sidecar as an explicit proxy.
    fn curl(&self, args: &[&str]) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-x"])
            .arg(format!("http://127.0.0.1:{}", self.capture))
            .arg("--cacert")
            .arg(self.bundle())
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Stop with SIGTERM (graceful: seal, ship, manifest) and return the records.
    async fn stop(mut self) -> (Vec<serde_json::Value>, bool) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "sidecar exited with {status}; log:\n{}",
            self.log()
        );
        let sink_url = format!("file://{}", self.dir.path().join("sink").display());
        read_recording(&sink_url, "tests/proxy-test/p-u").await
    }
}

impl Drop for Sidecar {
    /// A test that fails before `stop` must not leave the sidecar running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn read_recording(sink_url: &str, prefix: &str) -> (Vec<serde_json::Value>, bool) {
    let sink = cassette_recording::Sink::open(sink_url, &Default::default())
        .await
        .unwrap();
    let objects = cassette_recording::load(&sink, prefix).await.unwrap();
    let verified = cassette_recording::verify(&objects, None).is_ok();
    let records = objects
        .records()
        .map(|r| serde_json::to_value(r.unwrap()).unwrap())
        .collect();
    (records, verified)
}

fn kinds<'a>(records: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn write(path: &Path, s: &str) {
    std::fs::write(path, s).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepts_verifies_and_records_http1_and_http2() {
    install_provider();
    let ca = TestCa::new();
    let seen: Seen = Default::default();
    let good = upstream(&ca, &["echo.test"], seen.clone()).await;
    let impostor = upstream(&ca, &["someone-else.test"], seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);

    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=echo.test=https://127.0.0.1:{}",
                good.port()
            ),
            format!(
                "--upstream-override=impostor.test=https://127.0.0.1:{}",
                impostor.port()
            ),
        ],
        None,
    );

    let (out, err) = sidecar.curl(&["--http1.1", "https://echo.test/one"]);
    assert!(out.contains("\"version\":\"HTTP/1.1\""), "{out} {err}");
    let (out, err) = sidecar.curl(&["--http2", "-d", "payload=1", "https://echo.test/two"]);
    assert!(out.contains("\"version\":\"HTTP/2.0\""), "{out} {err}");
    assert!(out.contains("\"body_len\":9"), "{out}");

    // A secret inside a gzip body reaches the agent compressed, as sent...
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x"])
        .arg(format!("http://127.0.0.1:{}", sidecar.capture))
        .arg("--cacert")
        .arg(sidecar.bundle())
        .arg("https://echo.test/gz")
        .output()
        .unwrap();
    assert_eq!(
        &out.stdout[..2],
        [0x1f, 0x8b],
        "the wire keeps its gzip encoding"
    );

    // An upstream whose certificate is not for the name asked: refused, and said why.
    let (out, err) = sidecar.curl(&["https://impostor.test/steal"]);
    assert!(out.contains("could not be reached safely"), "{out} {err}");
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the impostor never received a request"
    );

    let (records, verified) = sidecar.stop().await;
    assert!(verified, "the recording verifies");
    let requests = kinds(&records, "request");
    let paths: Vec<&str> = requests
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/one", "/two", "/gz", "/steal"]);
    // ...and only as a mask in the recording, which holds the decoded text.
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(GZIPPED_KEY),
        "the compressed secret reached the recording"
    );
    let decoded = kinds(&records, "body")
        .into_iter()
        .filter_map(|b| b["text"].as_str())
        .any(|t| t.starts_with("{\"key\": \"«masked:google-api-key:"));
    assert!(
        decoded,
        "the gzip body is recorded decoded and masked: {text}"
    );
    let versions: Vec<&str> = requests
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions[..2], ["HTTP/1.1", "HTTP/2"]);
    // Bodies both ways, as text.
    let bodies = kinds(&records, "body");
    assert!(
        bodies
            .iter()
            .any(|b| b["direction"] == "request" && b["text"] == "payload=1")
    );
    assert!(bodies.iter().any(|b| {
        b["direction"] == "response"
            && b["text"]
                .as_str()
                .is_some_and(|t| t.contains("the upstream's reply"))
    }));
    // TLS facts: verified for echo.test, not for the impostor; the refusal is recorded.
    let tls = kinds(&records, "tls");
    assert!(
        tls.iter()
            .any(|t| t["sni"] == "echo.test" && t["verified"] == true && t["alpn"] == "h2")
    );
    assert!(
        tls.iter()
            .any(|t| t["sni"] == "impostor.test" && t["verified"] == false)
    );
    let blocked = kinds(&records, "blocked");
    assert!(
        blocked
            .iter()
            .any(|b| b["message"].as_str().unwrap().contains("impostor.test")),
        "{blocked:?}"
    );
    assert_eq!(kinds(&records, "exchange_end").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_holds_a_placeholder_and_google_gets_the_real_token() {
    install_provider();
    let ca = TestCa::new();
    let seen: Seen = Default::default();
    let google = upstream(&ca, &["storage.googleapis.com"], seen.clone()).await;
    let other = upstream(&ca, &["example.test"], seen.clone()).await;
    let metadata = fake_metadata().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=storage.googleapis.com=https://127.0.0.1:{}",
                google.port()
            ),
            format!(
                "--upstream-override=example.test=https://127.0.0.1:{}",
                other.port()
            ),
        ],
        Some(metadata),
    );

    // The shim answers like the metadata server, with a placeholder for the token.
    let shim = format!("http://127.0.0.1:{}/computeMetadata/v1", sidecar.metadata);
    let out = Command::new("curl")
        .args(["-sS", "-H", "Metadata-Flavor: Google"])
        .arg(format!("{shim}/instance/service-accounts/default/token"))
        .output()
        .unwrap();
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let placeholder = token["access_token"].as_str().unwrap().to_string();
    assert_ne!(placeholder, REAL_TOKEN);
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{shim}/project/project-id"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "Metadata-Flavor is required"
    );

    let bearer = format!("Authorization: Bearer {placeholder}");
    sidecar.curl(&[
        "-H",
        &bearer,
        "https://storage.googleapis.com/storage/v1/b?project=p",
    ]);
    sidecar.curl(&["-H", &bearer, "https://example.test/leak"]);
    sidecar.curl(&[
        "-u",
        &format!("git:{placeholder}"),
        "https://storage.googleapis.com/git",
    ]);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[0].1,
        format!("Bearer {REAL_TOKEN}"),
        "Google got the real token"
    );
    assert_eq!(
        seen[1].1,
        bearer["Authorization: ".len()..],
        "other hosts get the placeholder untouched"
    );
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("git:{REAL_TOKEN}"));
    assert_eq!(
        seen[2].1,
        format!("Basic {basic}"),
        "git basic-auth is swapped too"
    );

    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(REAL_TOKEN),
        "the real token never reaches the recording"
    );
    let tokens = kinds(&records, "token");
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!(tokens[0]["swap"], "bearer");
    assert_eq!(tokens[1]["swap"], "git-basic");
    assert_eq!(
        tokens[0]["account"],
        "agent@acme-agents.iam.gserviceaccount.com"
    );
    // The agent's token request to the shim is part of the recording too.
    assert!(
        kinds(&records, "request")
            .iter()
            .any(|r| r["authority"] == "metadata.google.internal"
                && r["path"].as_str().unwrap().ends_with("/token"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokered_credentials_reach_their_hosts_only_and_rotate_without_a_restart() {
    const FIRST: &str = "cht-first-0123456789abcdef0123456789";
    const ROTATED: &str = "cht-rotated-fedcba98765432109876543";
    const API: &str = "cassette-placeholder-code-api-00112233445566778899aabbccddeeff";
    const GIT: &str = "cassette-placeholder-code-git-ffeeddccbbaa99887766554433221100";
    install_provider();
    let ca = TestCa::new();
    let seen: Seen = Default::default();
    let api = upstream(&ca, &["api.code.test"], seen.clone()).await;
    let git = upstream(&ca, &["code.test"], seen.clone()).await;
    let other = upstream(&ca, &["example.test"], seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    // The Secret's key, as the kubelet writes it: a new file renamed over the old one.
    let secret = dir.path().join("value");
    let rotate = |value: &str| {
        let tmp = dir.path().join("..tmp");
        write(&tmp, value);
        std::fs::rename(&tmp, &secret).unwrap();
    };
    rotate(&format!("{FIRST}\n"));
    let table = serde_json::json!([
        {"name": "code-api", "hosts": ["api.code.test"], "presentation": "Bearer",
         "file": secret.to_str().unwrap(), "placeholder": API},
        {"name": "code-git", "hosts": ["code.test"], "presentation": "Basic",
         "file": secret.to_str().unwrap(), "placeholder": GIT},
    ]);
    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!("--credentials={table}"),
            format!(
                "--upstream-override=api.code.test=https://127.0.0.1:{}",
                api.port()
            ),
            format!(
                "--upstream-override=code.test=https://127.0.0.1:{}",
                git.port()
            ),
            format!(
                "--upstream-override=example.test=https://127.0.0.1:{}",
                other.port()
            ),
        ],
        None,
    );

    let bearer = format!("Authorization: Bearer {API}");
    sidecar.curl(&["-H", &bearer, "https://api.code.test/user"]);
    sidecar.curl(&[
        "-u",
        &format!("x-access-token:{GIT}"),
        "https://code.test/o/r.git/info/refs",
    ]);
    sidecar.curl(&["-H", &bearer, "https://example.test/collect"]);
    rotate(ROTATED);
    // The sidecar looks at the file again after its recheck interval.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sidecar.curl(&["-H", &bearer, "https://api.code.test/user"]);

    let seen = seen.lock().unwrap().clone();
    let auth: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{FIRST}"));
    assert_eq!(
        auth,
        [
            format!("Bearer {FIRST}").as_str(),
            format!("Basic {basic}").as_str(),
            format!("Bearer {API}").as_str(),
            format!("Bearer {ROTATED}").as_str(),
        ],
        "the real value toward the entries' hosts, the placeholder elsewhere, the rotated value after rotation"
    );
    let metrics = Command::new("curl")
        .args([
            "-sS",
            &format!("http://127.0.0.1:{}/metrics", sidecar.admin),
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        metrics.contains(r#"cassette_sidecar_credential_swaps_total{credential="code-api"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"cassette_sidecar_placeholder_leaks_total{credential="code-api"} 1"#),
        "{metrics}"
    );

    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(FIRST) && !text.contains(ROTATED),
        "no real value is recorded"
    );
    let tokens = kinds(&records, "token");
    let swapped: Vec<(&str, &str, &str)> = tokens
        .iter()
        .map(|t| {
            (
                t["credential"].as_str().unwrap(),
                t["host"].as_str().unwrap(),
                t["swap"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        swapped,
        [
            ("code-api", "api.code.test", "bearer"),
            ("code-git", "code.test", "git-basic"),
            ("code-api", "api.code.test", "bearer"),
        ]
    );
    let leaks = kinds(&records, "placeholder");
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0]["credential"], "code-api");
    assert!(
        leaks[0]["note"].as_str().unwrap().starts_with(
            "placeholder sent to example.test: not one of credential code-api's hosts"
        ),
        "{leaks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_the_metadata_server_loopback_and_link_local() {
    install_provider();
    let sidecar = Sidecar::start(&[], None);
    for target in [
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
        "https://169.254.169.254/",
        &format!("http://127.0.0.1:{}/metrics", sidecar.admin),
        "https://[::1]:443/",
    ] {
        let (out, err) = sidecar.curl(&["-H", "Metadata-Flavor: Google", target]);
        let said = format!("{out}{err}");
        assert!(
            said.contains("403")
                || said.contains("not forwarded")
                || said.contains("metadata shim")
                || said.contains("refused"),
            "{target}: {said}"
        );
        assert!(
            !said.contains("cassette_sidecar_"),
            "{target} reached the admin port: {said}"
        );
    }
    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    assert!(kinds(&records, "blocked").len() >= 4, "{records:?}");
}

/// `/readyz` is what the kubelet's startup probe asks before the agent container starts: it
/// must not say ready while a connection to the capture port would still be refused. An API
/// server that accepts and never answers keeps the sidecar's first read of the AgentSession
/// waiting (up to its 5 s bound), between writing the CA bundle and opening the listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_capture_port_takes_connections() {
    install_provider();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let config = tempfile::tempdir().unwrap();
    let kubeconfig = config.path().join("kubeconfig");
    write(
        &kubeconfig,
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: \"https://{api}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u, namespace: tests}}}}]\n"
        ),
    );
    let sidecar = Sidecar::start(&[format!("--kubeconfig={}", kubeconfig.display())], None);
    let connected = std::net::TcpStream::connect(("127.0.0.1", sidecar.capture));
    assert!(
        connected.is_ok(),
        "/readyz said ready while the capture port refused: {connected:?}; log:\n{}",
        sidecar.log()
    );
}

/// Open a TLS connection to `host` through the sidecar's CONNECT, trusting `roots` only.
async fn connect_through(
    sidecar: &Sidecar,
    host: &str,
    roots: rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.capture))
        .await
        .unwrap();
    tcp.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "the proxy closed during CONNECT"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_string()).unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A WebSocket frame of at most 125 bytes, masked with `key` as a client sends it, or not
/// as a server does.
fn ws_frame(opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode];
    match key {
        Some(k) => {
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => {
            out.push(payload.len() as u8);
            out.extend_from_slice(payload);
        }
    }
    out
}

/// Read one short frame; returns (opcode, unmasked payload).
async fn read_ws_frame<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.ok()?;
    let len = (head[1] & 0x7f) as usize;
    let mut key = [0u8; 4];
    if head[1] & 0x80 != 0 {
        io.read_exact(&mut key).await.ok()?;
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    if head[1] & 0x80 != 0 {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some((head[0] & 0x0f, payload))
}

/// What a WebSocket upstream saw: the upgrade requests' headers, as `name: value` lines.
type Upgrades = Arc<Mutex<Vec<String>>>;

/// A TLS WebSocket upstream: it answers an upgrade with 101 and echoes each message back
/// (unmasked, as a server sends).
async fn upgrade_upstream(ca: &TestCa, name: &str, seen: Upgrades) -> SocketAddr {
    let (acceptor, listener, addr) = tls_listener(ca, &[name], &[b"http/1.1"]).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let headers: Vec<String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                            .collect();
                        seen.lock().unwrap().push(headers.join("\n"));
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            if let Ok(upgraded) = upgrade.await {
                                let mut io = TokioIo::new(upgraded);
                                while let Some((opcode, payload)) = read_ws_frame(&mut io).await {
                                    let reply = ws_frame(opcode, &payload, None);
                                    if io.write_all(&reply).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        });
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                        response
                            .headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("upgrade", "websocket".parse().unwrap());
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Send an upgrade request over `tls` and read the response head.
async fn upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    protocol: &str,
    extra: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(
        format!(
            "GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_hosts_are_tunnelled_untouched_and_upgrades_are_carried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    install_provider();
    let ca = TestCa::new();
    let pinned = upstream(&ca, &["pinned.test"], Default::default()).await;
    let ws_seen = Upgrades::default();
    let ws = upgrade_upstream(&ca, "ws.test", ws_seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=pinned.test=https://127.0.0.1:{}",
                pinned.port()
            ),
            format!(
                "--upstream-override=ws.test=https://127.0.0.1:{}",
                ws.port()
            ),
            "--passthrough=pinned.test".to_string(),
        ],
        None,
    );

    // Passthrough: the client sees the upstream's own certificate (it trusts only the
    // upstream's CA, not the session CA), so nothing was intercepted.
    let mut tls = connect_through(&sidecar, "pinned.test", roots_from_pem(&ca.pem)).await;
    tls.write_all(b"GET /pinned HTTP/1.1\r\nHost: pinned.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(tls);

    // WebSocket: 101, then messages both ways, each recorded; a secret in one is masked.
    let bundle = std::fs::read_to_string(sidecar.bundle()).unwrap();
    let mut tls = connect_through(&sidecar, "ws.test", roots_from_pem(&bundle)).await;
    let head = upgrade(
        &mut tls,
        "websocket",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let secret = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    tls.write_all(&ws_frame(
        0x1,
        format!("token {secret}").as_bytes(),
        Some([7, 1, 3, 9]),
    ))
    .await
    .unwrap();
    let (opcode, echoed) = read_ws_frame(&mut tls).await.expect("the echo");
    assert_eq!(
        (opcode, echoed),
        (0x1, format!("token {secret}").into_bytes())
    );
    tls.write_all(&ws_frame(0x9, b"still there?", Some([1, 1, 1, 1])))
        .await
        .unwrap();
    assert_eq!(
        read_ws_frame(&mut tls).await.expect("the echoed ping").1,
        b"still there?"
    );
    // Bytes that are not WebSocket frames: the sidecar closes the connection, carries nothing.
    tls.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(
        read_until_closed(&mut tls, Duration::from_secs(5))
            .await
            .is_some_and(|rest| rest.is_empty()),
        "the sidecar carried what it cannot read"
    );
    drop(tls);
    let offered = ws_seen.lock().unwrap().clone();
    assert!(
        !offered[0]
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "no compression is negotiated through the recorder: {offered:?}"
    );

    // Any other upgrade would carry bytes the recorder cannot read: refused before upstream.
    let mut tls = connect_through(&sidecar, "ws.test", roots_from_pem(&bundle)).await;
    let head = upgrade(&mut tls, "h2c", "HTTP2-Settings: AAMAAABkAAQAAP__\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    drop(tls);
    assert_eq!(
        ws_seen.lock().unwrap().len(),
        1,
        "the h2c upgrade never went upstream"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    let tls = kinds(&records, "tls");
    assert!(
        tls.iter()
            .any(|t| t["sni"] == "pinned.test" && t["passthrough"] == true)
    );
    assert!(
        !kinds(&records, "request")
            .iter()
            .any(|r| r["authority"] == "pinned.test"),
        "a passthrough host's content is not read as HTTP"
    );
    assert!(
        kinds(&records, "stream")
            .iter()
            .any(|s| s["direction"] == "up" && s["final"] == true),
        "a passthrough tunnel's bytes are recorded"
    );
    let socket = kinds(&records, "request")
        .into_iter()
        .find(|r| r["path"] == "/socket")
        .expect("the upgrade request is recorded");
    let messages: Vec<(String, String, String)> = kinds(&records, "message")
        .into_iter()
        .filter(|m| m["exchange"] == socket["exchange"])
        .map(|m| {
            (
                m["direction"].as_str().unwrap().to_string(),
                m["opcode"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(
        (messages[0].0.as_str(), messages[0].1.as_str()),
        ("up", "text")
    );
    assert!(messages[0].2.starts_with("token «masked:"), "{messages:?}");
    assert!(!serde_json::to_string(&records).unwrap().contains(secret));
    assert_eq!(
        (
            messages[3].0.as_str(),
            messages[3].1.as_str(),
            messages[3].2.as_str()
        ),
        ("down", "ping", "still there?")
    );
    let end = kinds(&records, "exchange_end")
        .into_iter()
        .find(|e| e["exchange"] == socket["exchange"])
        .expect("the tunnel's exchange_end");
    assert!(
        end["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not speak WebSocket")),
        "{end}"
    );
    assert!(end["masked"].as_u64().unwrap() >= 2, "{end}");
    let refused = kinds(&records, "blocked")
        .into_iter()
        .find(|b| b["reason"] == "upgrade")
        .expect("the h2c upgrade is recorded as refused");
    assert!(refused["message"].as_str().unwrap().contains("h2c"));
}

/// Read whatever the peer sends until it closes or `limit` passes; `None` when it is still
/// open after `limit`.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    limit: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, io.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_the_sidecar_goes_on() {
    use tokio::io::AsyncWriteExt;
    install_provider();
    let ca = TestCa::new();
    let good = upstream(&ca, &["echo.test"], Seen::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=echo.test=https://127.0.0.1:{}",
                good.port()
            ),
            "--client-timeout-seconds=2".into(),
        ],
        None,
    );
    let roots = roots_from_pem(&std::fs::read_to_string(sidecar.bundle()).unwrap());

    // Malformed HTTP inside an intercepted TLS connection: 400, then closed.
    let mut tls = connect_through(&sidecar, "echo.test", roots.clone()).await;
    tls.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let said = read_until_closed(&mut tls, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(said.starts_with("HTTP/1.1 400"), "{said:?}");

    // Headers over the 1 MiB limit: refused, not buffered without end.
    let mut tls = connect_through(&sidecar, "echo.test", roots.clone()).await;
    let mut huge = b"GET /huge HTTP/1.1\r\nHost: echo.test\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let _ = tls.write_all(&huge).await;
    let said = read_until_closed(&mut tls, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 431"),
        "{said:?}"
    );

    // A slow client that never finishes its headers is let go after the client timeout.
    let mut tls = connect_through(&sidecar, "echo.test", roots.clone()).await;
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: echo.te")
        .await
        .unwrap();
    let said = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(said.is_some(), "a client stalled mid-headers was kept open");

    // A client that connects and says nothing is let go too.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.capture))
        .await
        .unwrap();
    silent
        .write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nHost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    let said = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(
        said.as_deref()
            .is_some_and(|s| s.starts_with("HTTP/1.1 200")),
        "a silent client was kept open: {said:?}"
    );

    // Broken TLS: a handshake record that is not a ClientHello.
    let mut broken = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.capture))
        .await
        .unwrap();
    broken
        .write_all(b"CONNECT echo.test:443 HTTP/1.1\r\nHost: echo.test:443\r\n\r\n")
        .await
        .unwrap();
    broken
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut broken, Duration::from_secs(10))
            .await
            .is_some(),
        "broken TLS was kept open"
    );

    // After all that, the sidecar serves as before.
    let (out, err) = sidecar.curl(&["https://echo.test/after"]);
    assert!(out.contains("\"path\":\"/after\""), "{out} {err}");

    // And each of them is in the recording, with why.
    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    let closes = kinds(&records, "conn_close");
    let errors: Vec<&str> = closes.iter().filter_map(|c| c["error"].as_str()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("timeout") || e.contains("timed out")),
        "{errors:?}"
    );
    let refusals: Vec<String> = kinds(&records, "blocked")
        .iter()
        .map(|b| b["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        refusals
            .iter()
            .any(|m| m.contains("sent nothing it could be understood by in 2s")),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .any(|m| m.contains("ClientHello") || m.contains("TLS")),
        "{refusals:?}"
    );
}

/// A tmpfs of `bytes` mounted on `dir` for as long as the value lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs spool needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The spool is a 2 MiB tmpfs, bodies are recorded up to 64 MiB: an 8 MiB upload or
/// download fills the disk in its middle. With `onFailure: closed` the bytes that could not
/// be recorded never pass (the upstream never gets the whole upload, the agent never gets the
/// whole download) and the gap says what did; with `open` both complete and the gap says the
/// traffic went on unrecorded. Either way the recording still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_cuts_bodies_when_closed_and_not_when_open() {
    install_provider();
    let ca = TestCa::new();
    let seen: Seen = Default::default();
    let good = upstream(&ca, &["echo.test"], seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let upload = dir.path().join("upload.bin");
    const SIZE: usize = 8 << 20;
    // Text that compresses badly, so that the spool's records are as big as the body.
    let text: String = (0..SIZE / 16)
        .map(|i| format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    write(&upload, &text);

    for mode in ["closed", "open"] {
        let mut mounted = None;
        let sidecar = Sidecar::start_with(
            &[
                format!("--upstream-ca={}", ca_file.display()),
                format!(
                    "--upstream-override=echo.test=https://127.0.0.1:{}",
                    good.port()
                ),
                format!("--on-failure={mode}"),
                format!("--max-body-bytes={}", 64 << 20),
            ],
            None,
            |spool| mounted = Some(Tmpfs::mount(spool, 2 << 20)),
        );

        let (up, up_err) = sidecar.curl(&[
            "--http1.1",
            "--data-binary",
            &format!("@{}", upload.display()),
            "https://echo.test/upload",
        ]);
        let whole_upload = up.contains(&format!("\"body_len\":{SIZE}"));
        // The download over HTTP/2: in closed mode its stream is reset, not the connection.
        let down = Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_version}",
                "-x",
            ])
            .arg(format!("http://127.0.0.1:{}", sidecar.capture))
            .arg("--cacert")
            .arg(sidecar.bundle())
            .arg(format!("https://echo.test/bytes/{SIZE}"))
            .output()
            .unwrap();
        let written = String::from_utf8_lossy(&down.stdout).into_owned();
        let (downloaded, version) = written.trim().split_once(' ').unwrap();
        let downloaded: usize = downloaded.parse().unwrap();
        assert_eq!(version, "2", "{mode}: the download went over HTTP/2");
        let down_err = String::from_utf8_lossy(&down.stderr).into_owned();

        let log = sidecar.log();
        let (records, verified) = sidecar.stop().await;
        drop(mounted);
        assert!(verified, "{mode}: the recording verifies");
        let gaps: Vec<String> = kinds(&records, "gap")
            .iter()
            .map(|g| format!("{} — {}", g["lost"], g["reason"]))
            .collect();
        match mode {
            "closed" => {
                assert!(
                    !whole_upload,
                    "closed: the upstream got the whole upload although the disk was full: {up} {up_err}"
                );
                assert!(
                    downloaded < SIZE,
                    "closed: the agent got the whole download although the disk was full"
                );
                assert!(
                    down_err.contains("HTTP/2 stream") || down_err.contains("RST_STREAM"),
                    "closed: the download's HTTP/2 stream was reset: {down_err}"
                );
                assert!(
                    gaps.iter().any(|g| g.contains("request body past byte")
                        && g.contains("onFailure is closed")),
                    "closed: the cut upload is a gap that says what passed: {gaps:#?}\n{log}"
                );
                assert!(
                    gaps.iter().any(|g| g.contains("response body past byte")),
                    "closed: the cut download is a gap too: {gaps:#?}"
                );
            }
            _ => {
                assert!(whole_upload, "open: the upload went on: {up} {up_err}");
                assert_eq!(downloaded, SIZE, "open: the download went on");
                assert!(
                    gaps.iter().any(|g| g.contains("onFailure is open")),
                    "open: the gap says the traffic went on unrecorded: {gaps:#?}\n{log}"
                );
            }
        }
    }
}

/// A zstd frame that decodes to `total` zero bytes from a few hundred KB: RLE blocks of 128 KiB,
/// each four bytes on the wire (RFC 8878: frame header without content size, 128 KiB window).
fn zstd_bomb(total: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    let blocks = total.div_ceil(BLOCK);
    for i in 0..blocks {
        let size = BLOCK.min(total - i * BLOCK) as u32;
        let last = u32::from(i + 1 == blocks);
        let header = (size << 3) | (1 << 1) | last;
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

/// gzip members of 1 MiB of zeros, one after another, to `total` bytes decoded.
fn gzip_bomb(total: u64) -> Vec<u8> {
    use std::io::Write;
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = member.finish().unwrap();
    member.repeat(total.div_ceil(1 << 20) as usize)
}

/// A TLS upstream for hostile input: `/bomb/zstd`, `/bomb/gzip` and `/bomb/br` answer 10 GB of
/// zeros compressed to a few MB (brotli: 8 KB, made by `tests/data/make-brotli-bomb.py`),
/// `/drain` counts an upload without keeping it, anything else "ok".
async fn hostile_upstream(ca: &TestCa) -> SocketAddr {
    const TEN_GB: u64 = 10 << 30;
    let zstd = Bytes::from(zstd_bomb(TEN_GB));
    let gzip = Bytes::from(gzip_bomb(TEN_GB));
    let brotli = Bytes::from_static(include_bytes!("data/zeros-10g.br"));
    let (acceptor, listener, addr) = tls_listener(ca, &["hostile.test"], &[b"http/1.1"]).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, zstd, gzip, brotli) =
                (acceptor.clone(), zstd.clone(), gzip.clone(), brotli.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let (zstd, gzip, brotli) = (zstd.clone(), gzip.clone(), brotli.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let (body, encoding) = match path.as_str() {
                            "/bomb/zstd" => (zstd, Some("zstd")),
                            "/bomb/gzip" => (gzip, Some("gzip")),
                            "/bomb/br" => (brotli, Some("br")),
                            "/drain" => {
                                let mut body = req.into_body();
                                let mut n = 0usize;
                                while let Some(frame) = body.frame().await {
                                    if let Ok(data) = frame?.into_data() {
                                        n += data.len();
                                    }
                                }
                                (Bytes::from(n.to_string()), None)
                            }
                            _ => (Bytes::from_static(b"ok"), None),
                        };
                        let mut response = Response::new(Full::new(body));
                        if let Some(encoding) = encoding {
                            response
                                .headers_mut()
                                .insert("content-encoding", encoding.parse().unwrap());
                        }
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue 14.3: hostile input costs the sidecar bounded memory. 10 GB of zeros as zstd, gzip
/// and brotli (a few MB on the wire at most), a 1 GB chunked upload and 100,000 request
/// headers leave its peak resident memory under 64 MiB above what it held idle, and a plain
/// request works after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_costs_bounded_memory() {
    install_provider();
    let ca = TestCa::new();
    let hostile = hostile_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let sidecar = Sidecar::start(
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=hostile.test=https://127.0.0.1:{}",
                hostile.port()
            ),
            // One path the policy denies: a bomb sent there is refused and still decoded
            // (bounded) for the recording.
            format!(
                "--session-spec={}",
                serde_json::json!({
                    "recording": {"sink": "file:///tmp/unused"},
                    "policy": {"rules": [{"name": "no-denied", "action": "deny",
                        "match": {"host": "hostile.test", "path": "/denied"}}]}
                })
            ),
        ],
        None,
    );
    let pid = sidecar.child.id();
    let plain = |what: &str| {
        let (out, err) = sidecar.curl(&["https://hostile.test/"]);
        assert_eq!(out, "ok", "a plain request after {what}: {err}");
    };
    plain("start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = memory(pid);
    let started = Instant::now();
    let bound = |what: &str| {
        let (now, peak) = memory(pid);
        println!(
            "{what}: idle {} MiB, peak {} MiB, now {} MiB, at {:?}",
            idle >> 20,
            peak >> 20,
            now >> 20,
            started.elapsed()
        );
        assert!(
            peak < idle + (64 << 20),
            "{what}: peak resident memory {} MiB, idle {} MiB (now {} MiB)",
            peak >> 20,
            idle >> 20,
            now >> 20
        );
    };

    for bomb in ["zstd", "gzip", "br"] {
        let (size, err) = sidecar.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("https://hostile.test/bomb/{bomb}"),
        ]);
        assert!(
            size.parse::<u64>().unwrap_or(0) > 1000,
            "the {bomb} bomb went through on the wire: {size} {err}"
        );
        bound(&format!("a 10 GB {bomb} bomb"));
        plain(&format!("the {bomb} bomb"));
    }

    // 1 GB, chunked (curl does not know the length of what it reads from a pipe).
    let mut zeros = Command::new("head")
        .args(["-c", &(1u64 << 30).to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let upload = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-x"])
        .arg(format!("http://127.0.0.1:{}", sidecar.capture))
        .arg("--cacert")
        .arg(sidecar.bundle())
        .args(["-H", "Transfer-Encoding: chunked", "-T", "-"])
        .arg("https://hostile.test/drain")
        .stdin(zeros.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = zeros.wait();
    assert_eq!(
        String::from_utf8_lossy(&upload.stdout),
        (1u64 << 30).to_string(),
        "the upstream got the whole upload: {}",
        String::from_utf8_lossy(&upload.stderr)
    );
    bound("a 1 GB chunked upload");
    plain("the upload");

    // A gzip bomb uploaded toward a path the policy denies: refused, read to its end, and
    // decoded no further than maxBodyBytes.
    let bomb = dir.path().join("bomb.gz");
    std::fs::write(&bomb, gzip_bomb(10 << 30)).unwrap();
    let (out, err) = sidecar.curl(&[
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", bomb.display()),
        "https://hostile.test/denied",
    ]);
    assert!(
        out.contains("no-denied"),
        "the bomb upload was refused: {out} {err}"
    );
    bound("a 10 GB gzip bomb uploaded toward a denied path");
    plain("the bomb upload");

    // 100,000 request headers: refused, not buffered.
    let headers = dir.path().join("headers.txt");
    let lines: String = (0..100_000).map(|i| format!("x-h{i}: v\n")).collect();
    write(&headers, &lines);
    let (out, err) = sidecar.curl(&[
        "-H",
        &format!("@{}", headers.display()),
        "https://hostile.test/",
    ]);
    assert_ne!(out, "ok", "100,000 headers were passed on: {err}");
    bound("100,000 request headers");
    plain("the headers");

    // Each bomb is recorded as decoded up to maxBodyBytes, and says it was cut there.
    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    assert!(
        kinds(&records, "blocked")
            .iter()
            .any(|b| b["rule"].as_str().is_some_and(|r| r.contains("no-denied"))),
        "the bomb upload is recorded as blocked"
    );
    for name in ["zstd", "gzip", "br"] {
        assert!(
            kinds(&records, "body").iter().any(|r| r["decoding"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{name}: truncated after decoding")))),
            "the {name} bomb's body says it was cut after decoding"
        );
    }
}

/// Issue 14.3, the last row: 10,000 slow clients — half stuck in a proxy request head, half in
/// a TLS handshake after their `CONNECT` — cost the sidecar under 64 MiB above idle, and a
/// plain request gets through while they hang on. The sidecar starts with a soft limit of
/// 1,024 open files, as a container runtime may give it, and takes the hard limit itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_slow_clients_cost_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 10_000;
    install_provider();
    let ca = TestCa::new();
    let hostile = hostile_upstream(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    write(&ca_file, &ca.pem);
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .expect("a hard limit on open files");
    // Each side holds one descriptor per client, and some of its own.
    assert!(
        hard >= CLIENTS as u64 + 1024,
        "the test needs a hard limit of {} open files, has {hard}",
        CLIENTS + 1024
    );
    // This process holds the clients' ends.
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )
    .unwrap();
    let sidecar = Sidecar::launch(
        &["prlimit", &format!("--nofile=1024:{hard}"), "--"],
        &[
            format!("--upstream-ca={}", ca_file.display()),
            format!(
                "--upstream-override=hostile.test=https://127.0.0.1:{}",
                hostile.port()
            ),
        ],
        None,
        |_| {},
    );
    let pid = sidecar.child.id();
    let plain = || {
        let (out, err) = sidecar.curl(&["https://hostile.test/"]);
        assert_eq!(out, "ok", "a plain request beside the slow clients: {err}");
    };
    plain();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = memory(pid);

    // The first bytes of a TLS ClientHello: a record header promising more than follows.
    let hello_start: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut slow = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.capture))
            .await
            .unwrap_or_else(|e| panic!("slow client {i}: {e}"));
        if i % 2 == 0 {
            stream
                .write_all(b"GET http://hostile.test/ HTTP/1.1\r\nHost: hostile.te")
                .await
                .unwrap();
        } else {
            stream
                .write_all(b"CONNECT hostile.test:443 HTTP/1.1\r\nHost: hostile.test:443\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut head))
                .await
                .unwrap_or_else(|_| panic!("CONNECT {i} got no answer; log:\n{}", sidecar.log()))
                .unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"), "CONNECT {i}");
            stream.write_all(hello_start).await.unwrap();
        }
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    plain();
    let (now, peak) = memory(pid);
    println!(
        "{CLIENTS} slow clients: idle {} MiB, peak {} MiB, now {} MiB",
        idle >> 20,
        peak >> 20,
        now >> 20
    );
    assert!(
        peak < idle + (64 << 20),
        "{CLIENTS} slow clients: peak resident memory {} MiB, idle {} MiB (now {} MiB)",
        peak >> 20,
        idle >> 20,
        now >> 20
    );
    drop(slow);
    let (records, verified) = sidecar.stop().await;
    assert!(verified);
    assert!(
        kinds(&records, "conn_open").len() >= CLIENTS / 2,
        "{}",
        records.len()
    );
}

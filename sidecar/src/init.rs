//! `cassette-sidecar init`: the capture rules, then proof that they capture.
//!
//! Every TCP connection leaving the pod from any UID but the sidecar's is redirected to the
//! capture port; the metadata server's address goes to the shim; every DNS query (UDP and TCP
//! port 53, to whichever resolver) goes to the sidecar's DNS proxy; loopback stays loopback;
//! all other UDP is rejected (no QUIC around the recorder). Inbound TCP to anything but the
//! sidecar's own ports is redirected to the inbound listener, which records it; inbound UDP
//! and other protocols are dropped. IPv6 gets the same rules, or is rejected outright when its
//! NAT table is unavailable. The rules go in with one `iptables-restore` per family (own
//! chains, flushed and refilled: idempotent). The check afterwards connects as another UID
//! and fails closed if the connection was not redirected.

use anyhow::{Context, Result, bail};
use cassette_api::names::{
    ADMIN_PORT, CAPTURE_PORT, DNS_PORT, INBOUND_PORT, METADATA_PORT, SIDECAR_UID,
};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

const NAT_CHAIN: &str = "CASSETTE_OUTPUT";
const FILTER_CHAIN: &str = "CASSETTE_FILTER";
const INBOUND_CHAIN: &str = "CASSETTE_INBOUND";
const INPUT_CHAIN: &str = "CASSETTE_INPUT";

/// What `init` installs, from its flags.
#[derive(Clone, Debug)]
pub struct Rules {
    pub capture_port: u16,
    pub metadata_port: u16,
    pub dns_port: u16,
    pub inbound_port: u16,
    pub uid: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            capture_port: CAPTURE_PORT,
            metadata_port: METADATA_PORT,
            dns_port: DNS_PORT,
            inbound_port: INBOUND_PORT,
            uid: SIDECAR_UID,
        }
    }
}

/// The nameservers of a resolv.conf.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

impl Rules {
    /// The iptables commands (arguments after the binary) for one family, in order: our
    /// chains' rules, each `-t <table> -A <chain> …`.
    pub fn commands(&self, v6: bool) -> Vec<Vec<String>> {
        let uid = self.uid.to_string();
        let capture = self.capture_port.to_string();
        let dns = self.dns_port.to_string();
        let nat_rule = |rest: &[&str]| -> Vec<String> {
            let mut rule = args(&["-t", "nat", "-A", NAT_CHAIN]);
            rule.extend(args(rest));
            rule
        };
        let mut nat: Vec<Vec<String>> = vec![nat_rule(&[
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ])];
        // DNS first, loopback resolvers included: every query an agent makes is recorded.
        for proto in ["udp", "tcp"] {
            nat.push(nat_rule(&[
                "-p",
                proto,
                "--dport",
                "53",
                "-j",
                "REDIRECT",
                "--to-ports",
                &dns,
            ]));
        }
        nat.push(nat_rule(&["-o", "lo", "-j", "RETURN"]));
        let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
        nat.push(nat_rule(&["-d", loopback, "-j", "RETURN"]));
        let metadata_port = self.metadata_port.to_string();
        // GCE's metadata server: 169.254.169.254, and fd20:ce::254 on IPv6.
        let metadata = if v6 {
            "fd20:ce::254/128"
        } else {
            "169.254.169.254/32"
        };
        nat.push(nat_rule(&[
            "-p",
            "tcp",
            "-d",
            metadata,
            "--dport",
            "80",
            "-j",
            "REDIRECT",
            "--to-ports",
            &metadata_port,
        ]));
        nat.push(nat_rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &capture,
        ]));

        // Inbound: every TCP connection into the pod but those to the sidecar's own ports
        // (the kubelet probes the sidecar on its admin port) goes to the inbound listener.
        let inbound_rule = |rest: &[&str]| -> Vec<String> {
            let mut rule = args(&["-t", "nat", "-A", INBOUND_CHAIN]);
            rule.extend(args(rest));
            rule
        };
        nat.push(inbound_rule(&["-i", "lo", "-j", "RETURN"]));
        for port in self.own_ports() {
            nat.push(inbound_rule(&[
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        let inbound = self.inbound_port.to_string();
        nat.push(inbound_rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inbound,
        ]));

        let mut filter: Vec<Vec<String>> = vec![
            filter_rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
            filter_rule(&["-o", "lo", "-j", "RETURN"]),
            // Redirected TCP and DNS leave through lo (above); anything else TCP is
            // established traffic of a redirected connection or has been rewritten already.
            filter_rule(&["-p", "tcp", "-j", "RETURN"]),
        ];
        // A redirected datagram keeps the output interface it was routed to before the
        // redirect (`-o lo` does not see it): let DNS to the proxy through by its new address.
        let loopback_host = if v6 { "::1/128" } else { "127.0.0.1/32" };
        filter.push(filter_rule(&[
            "-p",
            "udp",
            "-d",
            loopback_host,
            "--dport",
            &dns,
            "-j",
            "RETURN",
        ]));
        let reject = if v6 {
            "icmp6-port-unreachable"
        } else {
            "icmp-port-unreachable"
        };
        filter.push(filter_rule(&[
            "-p",
            "udp",
            "-j",
            "REJECT",
            "--reject-with",
            reject,
        ]));
        // Everything else (ICMP, SCTP, …) from the agent: the recorder cannot carry it.
        filter.push(filter_rule(&["-j", "REJECT"]));
        filter.extend(input_rules(v6));

        nat.extend(filter);
        nat
    }

    /// The sidecar's own ports, which inbound capture leaves alone.
    fn own_ports(&self) -> [u16; 5] {
        [
            self.capture_port,
            self.inbound_port,
            self.dns_port,
            self.metadata_port,
            ADMIN_PORT,
        ]
    }

    /// The commands that drop all IPv6 from the agent, and all IPv6 into the pod but the
    /// replies of the sidecar's own connections (when IPv6 NAT is unavailable).
    fn v6_reject_all(&self) -> Vec<Vec<String>> {
        let uid = self.uid.to_string();
        let mut rules = vec![
            filter_rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
            filter_rule(&["-o", "lo", "-j", "RETURN"]),
            filter_rule(&["-j", "REJECT"]),
        ];
        rules.extend(input_rules(true).into_iter().filter(|r| {
            // Without NAT nothing is redirected: inbound TCP is dropped too.
            !r.iter().any(|a| a == "tcp")
        }));
        rules
    }

    /// One `iptables-restore --noflush` input for a family: our chains declared (created, or
    /// emptied when they exist), refilled, and jumped to from the built-in chains where
    /// `missing_jumps` says the jump is not there yet. Applied as one transaction.
    fn restore_script(rules: &[Vec<String>], missing_jumps: &[(&str, &str, &str)]) -> String {
        let mut script = String::new();
        for table in ["nat", "filter"] {
            let of_table: Vec<&Vec<String>> = rules
                .iter()
                .filter(|r| r.get(1).map(String::as_str) == Some(table))
                .collect();
            let jumps: Vec<&(&str, &str, &str)> = missing_jumps
                .iter()
                .filter(|(t, _, _)| *t == table)
                .collect();
            let mut chains: Vec<&str> = of_table.iter().map(|r| r[3].as_str()).collect();
            chains.dedup();
            if chains.is_empty() && jumps.is_empty() {
                continue;
            }
            script.push_str(&format!("*{table}\n"));
            for chain in &chains {
                script.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for rule in of_table {
                script.push_str(&rule[2..].join(" "));
                script.push('\n');
            }
            for (_, builtin, chain) in jumps {
                script.push_str(&format!("-I {builtin} 1 -j {chain}\n"));
            }
            script.push_str("COMMIT\n");
        }
        script
    }
}

/// Inbound, in the filter table: replies of the pod's own connections and loopback pass,
/// TCP has been redirected to the inbound listener (nat), ICMP stays (neighbour discovery
/// needs it); UDP and everything else into the pod is dropped.
fn input_rules(v6: bool) -> Vec<Vec<String>> {
    let input_rule = |rest: &[&str]| -> Vec<String> {
        let mut rule = args(&["-t", "filter", "-A", INPUT_CHAIN]);
        rule.extend(args(rest));
        rule
    };
    let icmp = if v6 { "ipv6-icmp" } else { "icmp" };
    vec![
        input_rule(&[
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "RETURN",
        ]),
        input_rule(&["-i", "lo", "-j", "RETURN"]),
        input_rule(&["-p", "tcp", "-j", "RETURN"]),
        input_rule(&["-p", icmp, "-j", "RETURN"]),
        input_rule(&["-j", "DROP"]),
    ]
}

/// `-t filter -A <our chain> <rest>`.
fn filter_rule(rest: &[&str]) -> Vec<String> {
    let mut rule = args(&["-t", "filter", "-A", FILTER_CHAIN]);
    rule.extend(args(rest));
    rule
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Install the rules for both families and print them.
pub fn install(rules: &Rules) -> Result<()> {
    install_family("iptables", &rules.commands(false))?;
    match install_family("ip6tables", &rules.commands(true)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!(
                "cassette-init: IPv6 NAT unavailable ({e:#}); rejecting IPv6 from the agent instead"
            );
            install_family("ip6tables", &rules.v6_reject_all())?;
        }
    }
    Ok(())
}

/// Where each of our chains is jumped to from.
const JUMPS: [(&str, &str, &str); 4] = [
    ("nat", "OUTPUT", NAT_CHAIN),
    ("nat", "PREROUTING", INBOUND_CHAIN),
    ("filter", "OUTPUT", FILTER_CHAIN),
    ("filter", "INPUT", INPUT_CHAIN),
];

fn install_family(bin: &str, commands: &[Vec<String>]) -> Result<()> {
    let used: Vec<(&str, &str, &str)> = JUMPS
        .iter()
        .copied()
        .filter(|(table, _, chain)| commands.iter().any(|c| c[1] == *table && c[3] == *chain))
        .collect();
    let missing: Vec<(&str, &str, &str)> = used
        .into_iter()
        .filter(|(table, builtin, chain)| {
            run_quiet(bin, &["-t", table, "-C", builtin, "-j", chain]).is_err()
        })
        .collect();
    let script = Rules::restore_script(commands, &missing);
    restore(bin, &script)?;
    for cmd in commands {
        println!("{bin} {}", cmd.join(" "));
    }
    for (table, builtin, chain) in JUMPS {
        if commands.iter().any(|c| c[1] == table && c[3] == chain) {
            println!("{bin} -t {table} -I {builtin} -j {chain}");
        }
    }
    Ok(())
}

/// Apply one `iptables-restore` transaction without touching chains it does not name.
fn restore(bin: &str, script: &str) -> Result<()> {
    let restore = format!("{bin}-restore");
    let mut child = Command::new(&restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore} (is iptables installed?)"))?;
    child
        .stdin
        .take()
        .context("the restore's stdin")?
        .write_all(script.as_bytes())
        .with_context(|| format!("writing the rules to {restore}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{restore} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(bin: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(bin).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// The port the check connects to on the default gateway. If the capture works no packet
/// reaches the gateway at all.
pub const PROBE_PORT: u16 = 20001;

/// Prove the rules capture, failing closed: a connection from another UID toward the default
/// gateway (and one toward the metadata server) must arrive at our ports with its original
/// destination; one from the sidecar's UID must not; UDP from another UID must be refused.
pub fn validate(rules: &Rules, probe_uid: u32) -> Result<()> {
    let gateway = default_gateway().context("finding the default gateway to probe")?;
    let target = SocketAddr::new(gateway, PROBE_PORT);
    let metadata: SocketAddr = "169.254.169.254:80".parse().expect("valid address");
    let capture = listen(rules.capture_port)?;
    let shim = listen(rules.metadata_port)?;

    let exe = std::env::current_exe()?;
    let probe = |uid: u32, proto: &str, target: SocketAddr| -> Result<String> {
        use std::os::unix::process::CommandExt;
        let out = Command::new(&exe)
            .args(["probe", proto, &target.to_string()])
            .uid(uid)
            .gid(uid)
            .output()
            .context("running the capture probe")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };

    for (listener, target, port) in [
        (&capture, target, rules.capture_port),
        (&shim, metadata, rules.metadata_port),
    ] {
        let said = probe(probe_uid, "tcp", target)?;
        let seen = accept_within(listener, Duration::from_secs(3))?;
        if said != "connected" || seen != Some(target) {
            bail!(
                "capture check failed: a connection from UID {probe_uid} to {target} did not arrive at :{port} \
                 (the probe said {said:?}; original destination {seen:?}); refusing to start"
            );
        }
    }

    let _ = probe(rules.uid, "tcp", target)?;
    if let Some(seen) = accept_within(&capture, Duration::from_millis(200))? {
        bail!(
            "capture check failed: UID {} was redirected too (to {seen}); the sidecar would capture itself",
            rules.uid
        );
    }

    let udp = probe(probe_uid, "udp", target)?;
    if udp == "sent" {
        bail!("capture check failed: UDP from UID {probe_uid} to {target} was not refused");
    }

    // DNS, to any resolver, over both transports, arrives at the DNS proxy's port.
    let resolver = SocketAddr::new(gateway, 53);
    let dns_tcp = listen(rules.dns_port)?;
    let said = probe(probe_uid, "tcp", resolver)?;
    let seen = accept_within(&dns_tcp, Duration::from_secs(3))?;
    if said != "connected" || seen != Some(resolver) {
        bail!(
            "capture check failed: DNS over TCP from UID {probe_uid} to {resolver} did not arrive at :{} \
             (the probe said {said:?}; original destination {seen:?}); refusing to start",
            rules.dns_port
        );
    }
    let dns_udp = UdpSocket::bind(("127.0.0.1", rules.dns_port))
        .with_context(|| format!("binding UDP 127.0.0.1:{} for the check", rules.dns_port))?;
    dns_udp.set_read_timeout(Some(Duration::from_secs(3)))?;
    let said = probe(probe_uid, "udp", resolver)?;
    let mut buf = [0u8; 64];
    let got = dns_udp.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    if said != "sent" || got.as_deref().ok() != Some(PROBE_DATAGRAM) {
        bail!(
            "capture check failed: DNS over UDP from UID {probe_uid} to {resolver} did not arrive at :{} \
             (the probe said {said:?}); refusing to start",
            rules.dns_port
        );
    }
    println!(
        "capture check passed: TCP from UID {probe_uid} redirected to :{}, metadata to :{}, DNS (UDP and TCP) to :{}, UID {} exempt, other UDP refused",
        rules.capture_port, rules.metadata_port, rules.dns_port, rules.uid
    );
    Ok(())
}

/// What the check's UDP probe sends.
const PROBE_DATAGRAM: &[u8] = b"cassette-probe";

fn listen(port: u16) -> Result<TcpListener> {
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| {
        format!("binding 127.0.0.1:{port} for the check (is something already listening?)")
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The original destination of the first connection accepted within `limit`, if any.
fn accept_within(listener: &TcpListener, limit: Duration) -> Result<Option<SocketAddr>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(crate::original_dst::original_dst(&stream, false)?),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run inside the check as another UID: connect (TCP) or send (UDP) and say what happened.
pub fn probe(proto: &str, target: SocketAddr) -> String {
    match proto {
        "tcp" => match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(_) => "connected".into(),
            Err(e) => format!("refused: {e}"),
        },
        _ => {
            let socket = match UdpSocket::bind(("0.0.0.0", 0)) {
                Ok(s) => s,
                Err(e) => return format!("error: {e}"),
            };
            // A REJECT's error may only show on the next send.
            for _ in 0..3 {
                if let Err(e) = socket.send_to(PROBE_DATAGRAM, target) {
                    return format!("refused: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            "sent".into()
        }
    }
}

/// The IPv4 default gateway of this network namespace.
fn default_gateway() -> Result<IpAddr> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .context("running ip (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .and_then(|ip| ip.parse().ok())
        .context("no IPv4 default route in this network namespace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let conf = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
        assert_eq!(
            resolvers(conf),
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_rules_exempt_only_the_sidecar_and_capture_the_rest() {
        let rules = Rules::default();
        let v4: Vec<String> = rules.commands(false).iter().map(|c| c.join(" ")).collect();
        assert!(v4[0].contains("--uid-owner 1337 -j RETURN"));
        assert!(
            v4.iter().any(
                |c| c.contains("-d 169.254.169.254/32 --dport 80 -j REDIRECT --to-ports 15080")
            )
        );
        let last_output = v4
            .iter()
            .rposition(|c| c.contains("-A CASSETTE_OUTPUT"))
            .unwrap();
        assert!(v4[last_output].ends_with("-p tcp -j REDIRECT --to-ports 15001"));
        // DNS to any resolver goes to the proxy, before loopback is let through; no UDP to a
        // resolver is let out.
        let dns: Vec<usize> = ["udp", "tcp"]
            .iter()
            .map(|p| {
                v4.iter()
                    .position(|c| {
                        c.ends_with(&format!("-p {p} --dport 53 -j REDIRECT --to-ports 15053"))
                    })
                    .unwrap_or_else(|| panic!("no {p} DNS redirect: {v4:#?}"))
            })
            .collect();
        let lo = v4
            .iter()
            .position(|c| c.contains("-A CASSETTE_OUTPUT -o lo"))
            .unwrap();
        assert!(dns.iter().all(|i| *i < lo && *i > 0));
        assert!(!v4.iter().any(|c| c.contains("--dport 53 -j RETURN")));
        let to_proxy = v4
            .iter()
            .position(|c| {
                c.ends_with("-A CASSETTE_FILTER -p udp -d 127.0.0.1/32 --dport 15053 -j RETURN")
            })
            .expect("redirected DNS datagrams pass the filter");
        let reject = v4
            .iter()
            .position(|c| c.contains("-A CASSETTE_FILTER -p udp -j REJECT"))
            .unwrap();
        assert!(to_proxy < reject);
        assert!(
            v4.iter()
                .any(|c| c.contains("-A CASSETTE_FILTER -p udp -j REJECT"))
        );
        // Inbound: the sidecar's ports are left alone, every other TCP port is redirected,
        // UDP in is dropped.
        for port in [15001, 15006, 15053, 15080, 15090] {
            assert!(
                v4.iter().any(|c| c.ends_with(&format!(
                    "-A CASSETTE_INBOUND -p tcp --dport {port} -j RETURN"
                ))),
                "{port}: {v4:#?}"
            );
        }
        let last_inbound = v4
            .iter()
            .rposition(|c| c.contains("-A CASSETTE_INBOUND"))
            .unwrap();
        assert!(v4[last_inbound].ends_with("-p tcp -j REDIRECT --to-ports 15006"));
        let last_input = v4
            .iter()
            .rposition(|c| c.contains("-A CASSETTE_INPUT"))
            .unwrap();
        assert!(v4[last_input].ends_with("-A CASSETTE_INPUT -j DROP"));

        let v6: Vec<String> = rules.commands(true).iter().map(|c| c.join(" ")).collect();
        assert!(!v6.iter().any(|c| c.contains("169.254.169.254")));
        assert!(
            v6.iter()
                .any(|c| c.contains("-d fd20:ce::254/128 --dport 80 -j REDIRECT --to-ports 15080")),
            "GCE's IPv6 metadata address goes to the shim: {v6:#?}"
        );
        assert!(
            v6.iter()
                .any(|c| c.contains("--dport 53 -j REDIRECT --to-ports 15053"))
        );
        assert!(v6.iter().any(|c| c.contains("icmp6-port-unreachable")));
        assert!(
            v6.iter()
                .any(|c| c.contains("-A CASSETTE_INPUT -p ipv6-icmp -j RETURN"))
        );
    }

    #[test]
    fn one_restore_declares_fills_and_jumps_to_our_chains() {
        let rules = Rules::default().commands(false);
        let script = Rules::restore_script(&rules, &JUMPS[..1]);
        let nat = script.find("*nat\n").unwrap();
        let filter = script.find("*filter\n").unwrap();
        assert!(nat < filter);
        assert_eq!(script.matches("COMMIT\n").count(), 2);
        assert!(script.contains(":CASSETTE_OUTPUT - [0:0]\n:CASSETTE_INBOUND - [0:0]\n"));
        assert!(script.contains("\n-A CASSETTE_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(script.contains("-I OUTPUT 1 -j CASSETTE_OUTPUT\n"));
        // Only the missing jumps are added: an existing one is not doubled.
        assert!(!script.contains("-j CASSETTE_FILTER\n"));
        assert!(!script.contains("-t nat"));
    }
}

//! `cassette-sidecar init`: the capture rules, then proof that they capture.
//!
//! Every TCP connection leaving the pod from any UID but the sidecar's is redirected to the
//! capture port; the metadata server's address goes to the shim; loopback stays loopback;
//! UDP other than DNS to the configured resolvers is rejected (no QUIC around the recorder);
//! IPv6 gets the same rules, or is rejected outright when its NAT table is unavailable.
//! Installing is idempotent (own chains, flushed and refilled). The check afterwards connects
//! as another UID and fails closed if the connection was not redirected.

use anyhow::{Context, Result, bail};
use cassette_api::names::{CAPTURE_PORT, METADATA_PORT, SIDECAR_UID};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

const NAT_CHAIN: &str = "CASSETTE_OUTPUT";
const FILTER_CHAIN: &str = "CASSETTE_FILTER";

/// What `init` installs, from its flags.
#[derive(Clone, Debug)]
pub struct Rules {
    pub capture_port: u16,
    pub metadata_port: u16,
    pub uid: u32,
    /// DNS resolvers the agent may query over UDP (from /etc/resolv.conf by default).
    pub dns: Vec<IpAddr>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            capture_port: CAPTURE_PORT,
            metadata_port: METADATA_PORT,
            uid: SIDECAR_UID,
            dns: Vec::new(),
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
    /// The iptables commands (arguments after the binary) for one family, in order.
    pub fn commands(&self, v6: bool) -> Vec<Vec<String>> {
        let uid = self.uid.to_string();
        let capture = self.capture_port.to_string();
        let mut nat: Vec<Vec<&str>> = vec![
            vec![
                "-t",
                "nat",
                "-A",
                NAT_CHAIN,
                "-m",
                "owner",
                "--uid-owner",
                &uid,
                "-j",
                "RETURN",
            ],
            vec!["-t", "nat", "-A", NAT_CHAIN, "-o", "lo", "-j", "RETURN"],
        ];
        let loopback = if v6 { "::1/128" } else { "127.0.0.0/8" };
        nat.push(vec![
            "-t", "nat", "-A", NAT_CHAIN, "-d", loopback, "-j", "RETURN",
        ]);
        let metadata_port = self.metadata_port.to_string();
        // GCE's metadata server: 169.254.169.254, and fd20:ce::254 on IPv6.
        let metadata = if v6 {
            "fd20:ce::254/128"
        } else {
            "169.254.169.254/32"
        };
        nat.push(vec![
            "-t",
            "nat",
            "-A",
            NAT_CHAIN,
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
        ]);
        nat.push(vec![
            "-t",
            "nat",
            "-A",
            NAT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &capture,
        ]);

        let mut filter: Vec<Vec<String>> = vec![
            filter_rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
            filter_rule(&["-o", "lo", "-j", "RETURN"]),
            // Redirected TCP leaves through lo (above); anything else TCP is established
            // traffic of a redirected connection or has been rewritten already.
            filter_rule(&["-p", "tcp", "-j", "RETURN"]),
        ];
        for dns in self.dns.iter().filter(|ip| ip.is_ipv6() == v6) {
            let dst = dns.to_string();
            filter.push(filter_rule(&[
                "-p", "udp", "-d", &dst, "--dport", "53", "-j", "RETURN",
            ]));
        }
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

        let mut all: Vec<Vec<String>> = nat.into_iter().map(|c| args(&c)).collect();
        all.extend(filter);
        all
    }

    /// The commands that drop all IPv6 from the agent (when IPv6 NAT is unavailable).
    fn v6_reject_all(&self) -> Vec<Vec<String>> {
        let uid = self.uid.to_string();
        vec![
            filter_rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
            filter_rule(&["-o", "lo", "-j", "RETURN"]),
            filter_rule(&["-j", "REJECT"]),
        ]
    }
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
    install_family("iptables", rules, false)?;
    match install_family("ip6tables", rules, true) {
        Ok(()) => {}
        Err(e) => {
            eprintln!(
                "cassette-init: IPv6 NAT unavailable ({e:#}); rejecting IPv6 from the agent instead"
            );
            reset_chains("ip6tables", false)?;
            for cmd in rules.v6_reject_all() {
                run("ip6tables", &cmd)?;
            }
            ensure_jump("ip6tables", "filter", FILTER_CHAIN)?;
        }
    }
    Ok(())
}

fn install_family(bin: &str, rules: &Rules, v6: bool) -> Result<()> {
    reset_chains(bin, true)?;
    for cmd in rules.commands(v6) {
        run(bin, &cmd)?;
        println!("{bin} {}", cmd.join(" "));
    }
    ensure_jump(bin, "nat", NAT_CHAIN)?;
    ensure_jump(bin, "filter", FILTER_CHAIN)?;
    println!("{bin} -t nat -I OUTPUT -j {NAT_CHAIN}");
    println!("{bin} -t filter -I OUTPUT -j {FILTER_CHAIN}");
    Ok(())
}

/// Create (or empty) cassette's chains.
fn reset_chains(bin: &str, nat: bool) -> Result<()> {
    let mut chains = vec![("filter", FILTER_CHAIN)];
    if nat {
        chains.push(("nat", NAT_CHAIN));
    }
    for (table, chain) in chains {
        if run_quiet(bin, &["-t", table, "-N", chain]).is_err() {
            // It exists already: empty it.
            run(bin, &args(&["-t", table, "-F", chain]))?;
        }
    }
    Ok(())
}

/// Jump from OUTPUT to our chain, once.
fn ensure_jump(bin: &str, table: &str, chain: &str) -> Result<()> {
    if run_quiet(bin, &["-t", table, "-C", "OUTPUT", "-j", chain]).is_ok() {
        return Ok(());
    }
    run(bin, &args(&["-t", table, "-I", "OUTPUT", "1", "-j", chain]))
}

fn run(bin: &str, args: &[String]) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {bin} (is iptables installed?)"))?;
    if !out.status.success() {
        bail!(
            "{bin} {} failed: {}",
            args.join(" "),
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
    println!(
        "capture check passed: TCP from UID {probe_uid} redirected to :{}, metadata to :{}, UID {} exempt, UDP refused",
        rules.capture_port, rules.metadata_port, rules.uid
    );
    Ok(())
}

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
                if let Err(e) = socket.send_to(b"cassette-probe", target) {
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
        let rules = Rules {
            dns: vec!["10.96.0.10".parse().unwrap()],
            ..Rules::default()
        };
        let v4: Vec<String> = rules.commands(false).iter().map(|c| c.join(" ")).collect();
        assert!(v4[0].contains("--uid-owner 1337 -j RETURN"));
        assert!(
            v4.iter().any(
                |c| c.contains("-d 169.254.169.254/32 --dport 80 -j REDIRECT --to-ports 15080")
            )
        );
        let last_nat = v4.iter().rposition(|c| c.contains("-t nat")).unwrap();
        assert!(v4[last_nat].ends_with("-p tcp -j REDIRECT --to-ports 15001"));
        assert!(
            v4.iter()
                .any(|c| c.contains("-p udp -d 10.96.0.10 --dport 53 -j RETURN"))
        );
        assert!(v4.iter().any(|c| c.contains("-p udp -j REJECT")));
        let v6: Vec<String> = rules.commands(true).iter().map(|c| c.join(" ")).collect();
        assert!(!v6.iter().any(|c| c.contains("169.254.169.254")));
        assert!(
            v6.iter()
                .any(|c| c.contains("-d fd20:ce::254/128 --dport 80 -j REDIRECT --to-ports 15080")),
            "GCE's IPv6 metadata address goes to the shim: {v6:#?}"
        );
        assert!(
            !v6.iter().any(|c| c.contains("10.96.0.10")),
            "v4 resolvers stay out of ip6tables"
        );
        assert!(v6.iter().any(|c| c.contains("icmp6-port-unreachable")));
    }
}

//! `kubectl cassette`: the auditor's view of cassette recordings — list sessions, show and
//! replay what an agent did, verify that nothing was altered, export HAR or JSON lines, and
//! prove whether a given secret crossed a session. This file only wires the commands.

// Printing goes through `output`, which stops quietly when the reader of standard output
// goes away (`| head`) instead of panicking as std's macros do. Defined before the modules so
// that every one of them uses these.
macro_rules! println {
    () => {
        $crate::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}
macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::output::eprint(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cmd;
mod complete;
mod filter;
#[cfg(test)]
mod fixture;
mod har;
#[cfg(test)]
mod krew;
mod locate;
mod machine;
mod output;
mod render;
mod search;
mod timeline;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use cmd::Target;
use filter::{Filter, FilterArgs, filter_grammar};
use locate::Access;
use machine::OutputArgs;

/// Exit code for usage errors and for anything that could not be read or reached.
const USAGE_OR_IO: u8 = 3;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (verify: every recording verifies against a key you trust and is closed by its
     manifest; search: at least one exchange carried a candidate)
  1  verify: a recording is tampered with or invalid (each fault is printed with its
     segment, line and seq); search: no exchange carried any candidate
  2  verify: incomplete — no manifest yet (a live session, or a recorder that died), or a
     manifest that lists segments the recorder could not ship; what is there verifies
  3  usage error, or something could not be read (API server, sink, files) or the output
     not written (a reader that goes away, as `| head` does, is not an error: the command
     stops writing and exits with the code it would have had)
  4  verify: unchecked — what is there holds together, but no key you trust vouches for it
     (pass --public-key, or name the AgentSession so its status gives the pod's key)";

const RECORDING_HELP: &str = "Read the recording(s) at or below this file:// or gs:// URI (a recording, a session, or a sink) instead of asking the API server. gs:// is read with application-default credentials";

/// Inspect, verify, export and search cassette session recordings.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-cassette",
    bin_name = "kubectl cassette",
    version,
    after_help = EXIT_CODES,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(flatten)]
    access: AccessArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct AccessArgs {
    /// Path to the kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig cluster to use (instead of the context's).
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// The kubeconfig user to use (instead of the context's).
    #[arg(long, global = true)]
    user: Option<String>,
    /// Username to impersonate for the operation (a user or a service account).
    #[arg(long = "as", global = true, value_name = "USER")]
    as_user: Option<String>,
    /// Group to impersonate for the operation; repeat for several.
    #[arg(long, global = true, value_name = "GROUP")]
    as_group: Vec<String>,
    /// How long to wait for one request to the API server: seconds or a duration (30s, 1m);
    /// 0 for no limit.
    #[arg(long, global = true, value_name = "DURATION")]
    request_timeout: Option<String>,
    /// Namespace of the AgentSession (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// GCS endpoint override, for emulators (credentials are not sent to it).
    #[arg(long, global = true, env = "CASSETTE_GCS_ENDPOINT", hide = true)]
    gcs_endpoint: Option<String>,
}

/// A session, or `--recording URI`, and which pod.
#[derive(Args, Debug)]
struct TargetArgs {
    /// The AgentSession's name.
    #[arg(required_unless_present = "recording")]
    session: Option<String>,
    #[arg(long, value_name = "URI", help = RECORDING_HELP)]
    recording: Option<String>,
    /// Only the recording of this pod (`<pod>` or `<pod>-<uid>`); repeat for several.
    #[arg(long, value_name = "POD")]
    pod: Vec<String>,
}

impl TargetArgs {
    fn target(self) -> Target {
        Target {
            session: self.session,
            recording: self.recording,
            pod: self.pod,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a shell completion script for kubectl-cassette (kubectl itself completes
    /// `kubectl cassette …` through kubectl_complete-cassette).
    #[command(after_help = "\
Load it in the shell you use:
  bash:  source <(kubectl-cassette completion bash)
  zsh:   kubectl-cassette completion zsh > \"${fpath[1]}/_kubectl-cassette\"
  fish:  kubectl-cassette completion fish | source
For `kubectl cassette <TAB>` (kubectl 1.26+), put kubectl_complete-cassette on your PATH
beside kubectl-cassette; kubectl runs it with the words typed so far.")]
    Completion {
        #[arg(value_enum)]
        shell: complete::Shell,
    },
    /// Let a request held for review through (its id is in status.pendingReviews).
    #[command(
        after_help = "Exit codes: 0 recorded, 3 no such pending request, or the API server refused."
    )]
    Approve {
        /// The AgentSession's name.
        session: String,
        /// The review id, as `kubectl get agentsession NAME -o jsonpath='{.status.pendingReviews}'` lists it.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a request held for review.
    #[command(
        after_help = "Exit codes: 0 recorded, 3 no such pending request, or the API server refused."
    )]
    Deny {
        /// The AgentSession's name.
        session: String,
        /// The review id.
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List AgentSessions with their recording locations and the recordings found there.
    #[command(after_help = "Exit codes: 0 listed, 3 the API server or a sink could not be read.")]
    Ls {
        /// List sessions in every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(long, value_name = "URI", help = RECORDING_HELP)]
        recording: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a session's timeline: one row per exchange, blocked attempts and token swaps.
    #[command(after_help = concat!(filter_grammar!(), "\n\nExit codes: 0 shown, 3 usage error or unreadable recording."))]
    Show {
        #[command(flatten)]
        target: TargetArgs,
        /// Show this exchange in full (heads, timings, decision) instead of the table: N as
        /// the table numbers it (RUN.N where a recorder reused ids after a restart).
        #[arg(long, value_name = "N")]
        exchange: Option<String>,
        /// With --exchange: print the request and response bodies too.
        #[arg(long, requires = "exchange")]
        bodies: bool,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Replay the session's timeline paced by its recorded times.
    #[command(after_help = concat!(filter_grammar!(), "\n\nExit codes: 0 replayed, 3 usage error or unreadable recording."))]
    Replay {
        #[command(flatten)]
        target: TargetArgs,
        /// Pace factor: 1 is real time, 10 ten times faster, 0 no pacing.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Keep polling the sink for new segments of a live recording until session_end.
        #[arg(long)]
        follow: bool,
        /// With --follow: seconds between polls of the sink.
        #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
        interval: f64,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Verify chain, seals, manifest, key and place of every recording of a session.
    #[command(after_help = "\
Exit codes:
  0  OK          every recording verifies against a key you trust and is closed by its
                 signed manifest
  1  INVALID     tampered or invalid: a fault was found (each is printed with segment, line
                 and seq), the key differs from the one you trust, the recording names
                 another session or pod than the place it sits at, an object is there that
                 the recorder did not write, or segments the status reports are missing
  2  INCOMPLETE  no manifest yet (live session, or recorder died), or a signed manifest that
                 lists segments the recorder could not ship before its deadline; what is
                 there verifies against a key you trust; also when nothing was shipped yet
  3  usage error, or the API server, the sink or a file could not be read
  4  UNCHECKED   what is there holds together, but only against the key the recording
                 announces itself, and anyone can make a key: no key you trust vouches for it

The key you trust is --public-key (for every recording; pinning it is also how a recording is
verified with no cluster at all), else the pod's status.pods[].publicKey in the AgentSession.
When several checks fail the worst decides: 1, then 4, then 2.")]
    Verify {
        #[command(flatten)]
        target: TargetArgs,
        /// The key to trust: standard base64 of the 32-byte Ed25519 public key, or a file
        /// holding one or more such keys separated by white space (one per pod), e.g.
        /// `kubectl get asess NAME -o jsonpath='{.status.pods[*].publicKey}' > keys`.
        #[arg(long, value_name = "KEY|FILE")]
        public_key: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Export a session's exchanges as HAR 1.2, or its records as JSON lines.
    #[command(after_help = concat!(filter_grammar!(), "\n\nExit codes: 0 written, 3 usage error or unreadable recording / file."))]
    Export {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        format: ExportFormat,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Find the exchanges that carried a secret (by its masked fingerprint), or a body (by the
    /// digest every body keeps, also where it was too long to store).
    #[command(after_help = concat!(filter_grammar!(), "\n\n", "\
Exit codes: 0 at least one match, 1 no match, 3 usage error, unreadable input, or a key that
is not the one the recording's digests use.

--secret-file F: every candidate secret in F (a service-account key's private_key, a token,
an env file's values) is fingerprinted and looked for in the masks of headers, URLs and
bodies, and looked for as it is in everything stored (every record's fields, base64 payloads
decoded, whole bodies): a match there is a secret no detector masked, reported as STORED IN
CLEAR. What could not be searched is said (the unstored rest of long bodies). --body-file F: F is compared with every recorded body, stored or not (bodies longer
than maxBodyBytes keep their length and a keyed digest): as it is, and masked the way the
session masks (its spec.masking; the built-in detectors with --recording alone), since bodies
are recorded with their secrets masked.

Both use the session's fingerprint key, read with your own credentials from the Secret named
in spec.masking.fingerprintKey (or, when the session names none, the one the operator made:
cassette-fingerprint-<session>, key `key`), or from --key-file (the key's exact
bytes, as the Secret holds them:
kubectl get secret NAME -o jsonpath='{.data.KEY}' | base64 -d > key)."))]
    #[command(group = clap::ArgGroup::new("candidate").required(true).multiple(true).args(["secret_file", "body_file"]))]
    Search {
        #[command(flatten)]
        target: TargetArgs,
        /// A file holding the secret: a service-account JSON key, a token, a PEM key, an env file.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// A file that may be what a recorded body was (its bytes, decoded, as sent or seen).
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
        /// The fingerprint key, instead of the Secret the AgentSession names.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ExportFormat {
    /// Write HAR 1.2 to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    har: Option<PathBuf>,
    /// Write the records, byte for byte as recorded, to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Cobra's completion request, as kubectl_complete-cassette sends it for kubectl: the
    // words typed so far, not a command line to parse.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).is_some_and(|a| a == "__complete") {
        return complete_words(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(USAGE_OR_IO)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    cassette_recording::sink::install_ring_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(USAGE_OR_IO);
        }
    };
    let result = runtime.block_on(run(cli));
    if let Some(failure) = output::failure() {
        eprintln!("error: {failure}");
        return ExitCode::from(USAGE_OR_IO);
    }
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(USAGE_OR_IO)
        }
    }
}

fn complete_words(words: &[String]) -> ExitCode {
    cassette_recording::sink::install_ring_provider();
    let answer = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(complete::run(&Cli::command(), words)),
        Err(_) => complete::render(&[], complete::ERROR),
    };
    print!("{answer}");
    ExitCode::SUCCESS
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let access = Access {
        kubeconfig: cli.access.kubeconfig,
        context: cli.access.context,
        cluster: cli.access.cluster,
        user: cli.access.user,
        namespace: cli.access.namespace,
        impersonate: cli.access.as_user,
        impersonate_groups: cli.access.as_group,
        request_timeout: cli
            .access
            .request_timeout
            .as_deref()
            .map(locate::parse_request_timeout)
            .transpose()?,
        gcs: cassette_recording::GcsOptions {
            anonymous: cli.access.gcs_endpoint.is_some(),
            endpoint: cli.access.gcs_endpoint,
        },
    };
    match cli.command {
        Command::Completion { shell } => {
            crate::output::write_all(&complete::script(shell, Cli::command()));
        }
        Command::Approve {
            session,
            id,
            reason,
        } => {
            cmd::approve::run(
                &access,
                &session,
                &id,
                cassette_api::ReviewDecision::Approve,
                reason,
            )
            .await?
        }
        Command::Deny {
            session,
            id,
            reason,
        } => {
            cmd::approve::run(
                &access,
                &session,
                &id,
                cassette_api::ReviewDecision::Deny,
                reason,
            )
            .await?
        }
        Command::Ls {
            all_namespaces,
            recording,
            output,
        } => cmd::ls::run(&access, all_namespaces, recording.as_deref(), output.output).await?,
        Command::Show {
            target,
            filter,
            exchange,
            bodies,
            output,
        } => {
            let filter = Filter::new(&filter, jiff::Timestamp::now())?;
            cmd::show::run(
                &access,
                &target.target(),
                &filter,
                exchange.as_deref(),
                bodies,
                output.output,
            )
            .await?
        }
        Command::Replay {
            target,
            filter,
            speed,
            follow,
            interval,
        } => {
            let interval = Duration::try_from_secs_f64(interval)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!("--interval must be a positive number of seconds")
                })?;
            let filter = Filter::new(&filter, jiff::Timestamp::now())?;
            cmd::replay::run(&access, &target.target(), &filter, speed, follow, interval).await?
        }
        Command::Verify {
            target,
            public_key,
            output,
        } => {
            let format = output.structured_only("verify")?;
            return cmd::verify::run(&access, &target.target(), public_key.as_deref(), format)
                .await;
        }
        Command::Export {
            target,
            filter,
            format,
        } => {
            let filter = Filter::new(&filter, jiff::Timestamp::now())?;
            match (format.har, format.jsonl) {
                (Some(path), _) => {
                    cmd::export::har(&access, &target.target(), &filter, &path).await?
                }
                (None, Some(path)) => {
                    cmd::export::jsonl(&access, &target.target(), &filter, &path).await?
                }
                (None, None) => unreachable!("clap requires one of --har and --jsonl"),
            }
        }
        Command::Search {
            target,
            filter,
            secret_file,
            body_file,
            key_file,
            output,
        } => {
            let format = output.structured_only("search")?;
            let filter = Filter::new(&filter, jiff::Timestamp::now())?;
            return cmd::search::run(
                &access,
                &target.target(),
                &filter,
                cmd::search::Candidates {
                    secret_file: secret_file.as_deref(),
                    body_file: body_file.as_deref(),
                },
                key_file.as_deref(),
                format,
            )
            .await;
        }
    }
    Ok(0)
}

//! Shell completion: `completion bash|zsh|fish` prints clap_complete's script for
//! `kubectl-cassette`, and `__complete WORDS…` (what `kubectl_complete-cassette` asks for
//! kubectl) answers in cobra's protocol: one candidate a line (`value<TAB>description`), then
//! `:<directive>`. Verbs, flags and flag values come from the clap definition; session names
//! from the API server, given a few seconds at most, else none.

use std::time::Duration;

use clap::{Arg, Command, ValueEnum, ValueHint};

use crate::locate::Access;

/// Cobra's directives (a bit map): the shell ignores the answer.
pub const ERROR: u32 = 1;
/// The shell does not fall back to completing file names.
pub const NO_FILE_COMP: u32 = 4;
/// The shell does what it does by default (file names, when there is no candidate).
pub const DEFAULT: u32 = 0;

/// How long the API server gets to list sessions for a completion.
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(2);

/// `completion` shells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script for a shell, for `kubectl-cassette` typed as such.
pub fn script(shell: Shell, mut cmd: Command) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    const BIN: &str = "kubectl-cassette";
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    if shell == clap_complete::Shell::Bash {
        // clap_complete's bash script names a verb's case `kubectl__subcmd__cassette__…` where
        // it dispatches to `kubectl__cassette__…` (a `-` in the binary's name is spelt two
        // ways), so no verb would complete its flags: one spelling for both.
        let text = String::from_utf8_lossy(&out).replace(
            "kubectl__subcmd__cassette__subcmd__",
            "kubectl__cassette__subcmd__",
        );
        return text.into_bytes();
    }
    out
}

/// What the words before the cursor call for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// `(value, description)`.
    pub candidates: Vec<(String, String)>,
    pub directive: u32,
    /// Session names starting with this are wanted too (from the API server).
    pub sessions: Option<String>,
    /// Flags with values seen before the cursor, by clap id (`kubeconfig`, `context`, …).
    pub seen: Vec<(String, String)>,
}

fn one_line(text: Option<&clap::builder::StyledStr>) -> String {
    text.map(|t| t.to_string())
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

/// Completes the last of `words` (`""` for a new word) after the ones before it. Pure: the
/// caller adds session names when `sessions` asks for them.
pub fn answer(root: &Command, words: &[String]) -> Answer {
    let mut root = root.clone();
    root.build();
    let (current, before) = match words.split_last() {
        Some((c, b)) => (c.as_str(), b),
        None => ("", &[][..]),
    };
    let mut cmd = &root;
    let mut positionals = 0usize;
    let mut pending: Option<&Arg> = None;
    let mut seen = Vec::new();
    for word in before {
        if let Some(arg) = pending.take() {
            seen.push((arg.get_id().to_string(), word.clone()));
            continue;
        }
        if let Some(long) = word.strip_prefix("--").filter(|l| !l.is_empty()) {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(name)) {
                match inline {
                    Some(v) => seen.push((arg.get_id().to_string(), v.to_string())),
                    None if takes_value(arg) => pending = Some(arg),
                    None => {}
                }
            }
            continue;
        }
        if let Some(short) = word.strip_prefix('-').and_then(|s| s.chars().next()) {
            if let Some(arg) = cmd.get_arguments().find(|a| a.get_short() == Some(short)) {
                let rest = &word[1 + short.len_utf8()..];
                if takes_value(arg) {
                    if rest.is_empty() {
                        pending = Some(arg);
                    } else {
                        seen.push((arg.get_id().to_string(), rest.to_string()));
                    }
                }
            }
            continue;
        }
        match cmd.find_subcommand(word) {
            Some(sub) => {
                cmd = sub;
                positionals = 0;
            }
            None => positionals += 1,
        }
    }
    let starts = |v: &str| v.starts_with(current);
    let mut answer = Answer {
        directive: NO_FILE_COMP,
        seen,
        ..Default::default()
    };
    if let Some(arg) = pending {
        let values: Vec<(String, String)> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set() && starts(v.get_name()))
            .map(|v| (v.get_name().to_string(), one_line(v.get_help())))
            .collect();
        let file = matches!(
            arg.get_value_hint(),
            ValueHint::FilePath | ValueHint::AnyPath | ValueHint::DirPath
        ) || arg
            .get_value_names()
            .is_some_and(|n| n.iter().any(|n| n.as_str().contains("FILE")));
        if values.is_empty() && file {
            answer.directive = DEFAULT;
        }
        answer.candidates = values;
        return answer;
    }
    if current.starts_with('-') {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let flag = format!("--{long}");
                if starts(&flag) {
                    answer.candidates.push((flag, one_line(arg.get_help())));
                }
            }
        }
        return answer;
    }
    let subcommands: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subcommands.is_empty() {
        answer.candidates = subcommands
            .iter()
            .filter(|s| starts(s.get_name()))
            .map(|s| (s.get_name().to_string(), one_line(s.get_about())))
            .collect();
        return answer;
    }
    let names_a_session = cmd
        .get_positionals()
        .next()
        .is_some_and(|a| a.get_id() == "session");
    if positionals == 0 && names_a_session {
        answer.sessions = Some(current.to_string());
    }
    answer
}

/// The AgentSessions whose names start with `prefix`, from the API server the words name;
/// none when it cannot be reached in time.
async fn sessions(seen: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    let value = |id: &str| {
        seen.iter()
            .rev()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.clone())
    };
    let access = Access {
        kubeconfig: value("kubeconfig").map(Into::into),
        context: value("context"),
        cluster: value("cluster"),
        user: value("user"),
        namespace: value("namespace"),
        impersonate: value("as_user"),
        impersonate_groups: seen
            .iter()
            .filter(|(k, _)| k == "as_group")
            .map(|(_, v)| v.clone())
            .collect(),
        request_timeout: Some(Some(SESSIONS_TIMEOUT)),
        gcs: Default::default(),
    };
    let listed = tokio::time::timeout(SESSIONS_TIMEOUT, async {
        access.cluster().await?.sessions(false).await
    })
    .await;
    let Ok(Ok(sessions)) = listed else {
        return Vec::new();
    };
    let mut names: Vec<(String, String)> = sessions
        .into_iter()
        .filter_map(|s| {
            let name = s.metadata.name.clone()?;
            let phase = s
                .status
                .as_ref()
                .and_then(|st| st.phase)
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "no phase yet".into());
            let agent = s
                .spec
                .agent
                .as_ref()
                .and_then(|a| a.service_account.clone())
                .map(|a| format!(", agent {a}"))
                .unwrap_or_default();
            name.starts_with(prefix)
                .then(|| (name, format!("AgentSession, {phase}{agent}")))
        })
        .collect();
    names.sort();
    names
}

/// Cobra's answer: a candidate a line, then the directive.
pub fn render(candidates: &[(String, String)], directive: u32) -> String {
    let mut out = String::new();
    for (value, description) in candidates {
        out.push_str(value);
        if !description.is_empty() {
            out.push('\t');
            out.push_str(description);
        }
        out.push('\n');
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

/// `kubectl-cassette __complete WORDS…`.
pub async fn run(root: &Command, words: &[String]) -> String {
    let mut answer = answer(root, words);
    if let Some(prefix) = answer.sessions.take() {
        answer.candidates = sessions(&answer.seen, &prefix).await;
    }
    render(&answer.candidates, answer.directive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(words: &[&str]) -> Answer {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        answer(&<crate::Cli as clap::CommandFactory>::command(), &words)
    }

    fn values(a: &Answer) -> Vec<&str> {
        a.candidates.iter().map(|(v, _)| v.as_str()).collect()
    }

    #[test]
    fn verbs_complete_from_a_prefix_with_their_description() {
        let a = complete(&["sh"]);
        assert_eq!(values(&a), ["show"]);
        assert!(
            a.candidates[0].1.starts_with("Show a session's timeline"),
            "{a:?}"
        );
        assert_eq!(a.directive, NO_FILE_COMP);
        let all = complete(&[""]);
        for verb in [
            "ls",
            "show",
            "replay",
            "verify",
            "export",
            "search",
            "approve",
            "deny",
            "completion",
        ] {
            assert!(values(&all).contains(&verb), "{verb} missing: {all:?}");
        }
        // Global flags before the verb are passed over, with their values.
        let a = complete(&["--context", "dev", "-n", "agents", "ve"]);
        assert_eq!(values(&a), ["verify"]);
        assert_eq!(
            a.seen,
            [
                ("context".to_string(), "dev".to_string()),
                ("namespace".to_string(), "agents".to_string())
            ]
        );
    }

    #[test]
    fn flags_and_their_values_complete_per_verb() {
        let a = complete(&["show", "fix-ci", "--hi"]);
        assert_eq!(values(&a), ["--hide-metadata"]);
        let a = complete(&["show", "--"]);
        for flag in [
            "--host",
            "--decision",
            "--output",
            "--kubeconfig",
            "--as-group",
        ] {
            assert!(values(&a).contains(&flag), "{flag} missing");
        }
        assert!(
            !values(&a).contains(&"--gcs-endpoint"),
            "hidden flags stay hidden"
        );
        let a = complete(&["show", "fix-ci", "--decision", ""]);
        assert_eq!(
            values(&a),
            ["allow", "deny", "review", "blocked", "passthrough"]
        );
        let a = complete(&["verify", "fix-ci", "-o", "j"]);
        assert_eq!(values(&a), ["json"]);
        let a = complete(&["completion", "z"]);
        // `completion` takes a shell as its positional value.
        assert!(a.sessions.is_none());
        // A file flag lets the shell complete file names.
        let a = complete(&["search", "fix-ci", "--secret-file", ""]);
        assert_eq!(a.directive, DEFAULT);
        assert!(a.candidates.is_empty());
    }

    #[test]
    fn a_session_is_wanted_where_a_verb_names_one() {
        assert_eq!(complete(&["show", "fi"]).sessions.as_deref(), Some("fi"));
        assert_eq!(
            complete(&["-n", "agents", "verify", ""])
                .sessions
                .as_deref(),
            Some("")
        );
        assert_eq!(complete(&["approve", ""]).sessions.as_deref(), Some(""));
        // Not a second time, and not for ls.
        assert_eq!(complete(&["show", "fix-ci", ""]).sessions, None);
        assert_eq!(complete(&["ls", ""]).sessions, None);
    }

    #[test]
    fn answers_follow_cobras_protocol() {
        assert_eq!(
            render(
                &[
                    ("show".into(), "Show it".into()),
                    ("shout".into(), String::new())
                ],
                4
            ),
            "show\tShow it\nshout\n:4\n"
        );
        assert_eq!(render(&[], ERROR), ":1\n");
    }

    #[test]
    fn completion_scripts_name_the_plugin_binary() {
        let cmd = <crate::Cli as clap::CommandFactory>::command();
        for (shell, needle) in [
            (Shell::Bash, "complete -F _kubectl__cassette"),
            (Shell::Zsh, "#compdef kubectl-cassette"),
            (Shell::Fish, "complete -c kubectl-cassette"),
        ] {
            let text = String::from_utf8(script(shell, cmd.clone())).unwrap();
            assert!(text.contains(needle), "{shell:?}: {needle:?} missing");
            assert!(text.contains("hide-metadata"), "{shell:?}: flags missing");
        }
    }
}

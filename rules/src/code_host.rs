//! Ref changes through a code host's REST API: the same branch a `gitRef` rule protects from
//! `git push` also moves when a pull request is merged, a file is committed through the
//! contents API, or the refs API is called. These requests are read as ref changes so that
//! `gitRef` rules hold for them too.
//!
//! Covered, by path shape on any host (GitHub Enterprise and self-hosted GitLab and Gitea
//! spell them the same): GitHub (`/repos/O/R/…`, also under `/api/v3`), GitLab
//! (`/api/v4/projects/ID/…`), Gitea and Forgejo (`/api/v1/repos/O/R/…`), GraphQL mutations
//! that move refs (`POST /graphql`), and Secure Source Manager pull-request merges. Where the
//! ref is named in the body, the body is read ([`MAX_BODY`] bytes, JSON or form); where the
//! URL and body cannot name it (a merge moves the pull request's base, which only the host
//! knows), the ref is *unknown*, and policy refuses it under any `gitRef` rule that would
//! deny or hold it.

use crate::git::RefUpdateKind;

/// The most body read to find a ref name.
pub const MAX_BODY: usize = 1 << 20;

/// The ref a REST call changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRef {
    /// The full ref name, or `None` when the request does not say which ref it changes.
    pub name: Option<String>,
    /// Create, update or delete.
    pub kind: RefUpdateKind,
    /// For an unknown ref, why it is unknown: `a pull-request merge moves its base branch`.
    pub why: Option<String>,
}

/// A REST call that changes refs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRefChange {
    /// The operation: `github.pulls.merge`, `gitlab.repository.files.update`…
    pub api: &'static str,
    /// The refs it changes.
    pub refs: Vec<RestRef>,
}

fn known(name: String, kind: RefUpdateKind) -> RestRef {
    RestRef {
        name: Some(name),
        kind,
        why: None,
    }
}

fn unknown(why: &str, kind: RefUpdateKind) -> RestRef {
    RestRef {
        name: None,
        kind,
        why: Some(why.to_owned()),
    }
}

/// `main` → `refs/heads/main`; `refs/tags/v1` and `heads/x` keep what they say.
fn branch_ref(name: &str) -> String {
    let name = name.trim();
    if name.starts_with("refs/") {
        name.to_owned()
    } else if let Some(rest) = name.strip_prefix("heads/").or(name.strip_prefix("tags/")) {
        let kind = if name.starts_with("heads/") {
            "heads"
        } else {
            "tags"
        };
        format!("refs/{kind}/{rest}")
    } else {
        format!("refs/heads/{name}")
    }
}

/// A field of a JSON object body, or of a form body, or of the query.
struct Fields<'a> {
    json: Option<serde_json::Value>,
    form: Vec<(String, String)>,
    query: Option<&'a str>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.json.as_ref().and_then(|j| j.get(name)) {
            return v.as_str().map(str::to_owned);
        }
        if let Some((_, v)) = self.form.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (decode(k) == name).then(|| decode(v))
        })
    }
}

fn decode(s: &str) -> String {
    crate::glob::decode_path(&s.replace('+', " "))
}

fn fields<'a>(body: Option<&[u8]>, query: Option<&'a str>) -> Fields<'a> {
    let body = body.filter(|b| b.len() <= MAX_BODY).unwrap_or(b"");
    let json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object);
    let form = if json.is_none() {
        String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    } else {
        Vec::new()
    };
    Fields { json, form, query }
}

/// Whether a request may change refs that only its body names, so that the sidecar reads
/// the body (up to [`MAX_BODY`]) and calls [`ref_changes`] with it before deciding.
pub fn needs_body(method: &str, path: &str) -> bool {
    ref_changes(method, path, None, None).is_some_and(|c| c.refs.iter().any(|r| r.name.is_none()))
}

/// The refs a code-host REST call changes, or `None` when it changes none. `body` is the
/// request body (or `None` when not read: refs named only there are then unknown).
pub fn ref_changes(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Option<&[u8]>,
) -> Option<RestRefChange> {
    let normal = crate::path::normalize_path(path);
    let segs: Vec<String> = crate::classify::segments(&normal.path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = method.to_ascii_uppercase();
    let f = || fields(body, query);
    use RefUpdateKind::{Create, Delete, Update};
    let change = |api: &'static str, refs: Vec<RestRef>| Some(RestRefChange { api, refs });
    let branch_or = |name: Option<String>, why: &str, kind| match name {
        Some(n) if !n.is_empty() => known(branch_ref(&n), kind),
        _ => unknown(why, kind),
    };
    const DEFAULT_BRANCH: &str = "no branch is named, so the repository's default branch";
    const MERGE_BASE: &str =
        "a pull-request merge moves its base branch, which only the code host knows";
    const PR_HEAD: &str =
        "updating a pull request's branch moves its head branch, which only the code host knows";
    // GitHub (also GitHub Enterprise's /api/v3) and Gitea/Forgejo (/api/v1).
    let github = match segs.as_slice() {
        ["api", "v3", "repos", rest @ ..]
        | ["api", "v1", "repos", rest @ ..]
        | ["repos", rest @ ..] => Some(rest),
        _ => None,
    };
    if let Some(rest) = github {
        return match (method.as_str(), rest) {
            ("PUT" | "POST", [_, _, "pulls", _, "merge"]) => {
                change("github.pulls.merge", vec![unknown(MERGE_BASE, Update)])
            }
            ("PUT" | "POST", [_, _, "pulls", _, "update-branch"]) => {
                change("github.pulls.updateBranch", vec![unknown(PR_HEAD, Update)])
            }
            ("PUT" | "POST" | "DELETE", [_, _, "contents", file @ ..]) if !file.is_empty() => {
                let f = f();
                let kind = if method == "DELETE" {
                    "delete"
                } else {
                    "update"
                };
                // Gitea's new_branch creates a branch from `branch`.
                let mut refs = vec![branch_or(f.get("branch"), DEFAULT_BRANCH, Update)];
                if let Some(new) = f.get("new_branch").filter(|n| !n.is_empty()) {
                    refs = vec![known(branch_ref(&new), Create)];
                }
                change(
                    if kind == "delete" {
                        "github.repos.deleteFile"
                    } else {
                        "github.repos.createOrUpdateFileContents"
                    },
                    refs,
                )
            }
            ("POST", [_, _, "git", "refs"]) => {
                let f = f();
                change(
                    "github.git.createRef",
                    vec![branch_or(
                        f.get("ref"),
                        "the new ref is named in the body",
                        Create,
                    )],
                )
            }
            ("PATCH" | "POST", [_, _, "git", "refs", name @ ..]) if !name.is_empty() => change(
                "github.git.updateRef",
                vec![known(branch_ref(&name.join("/")), Update)],
            ),
            ("DELETE", [_, _, "git", "refs", name @ ..]) if !name.is_empty() => change(
                "github.git.deleteRef",
                vec![known(branch_ref(&name.join("/")), Delete)],
            ),
            ("POST", [_, _, "merges"]) => {
                let f = f();
                change(
                    "github.repos.merge",
                    vec![branch_or(
                        f.get("base"),
                        "the base branch is named in the body",
                        Update,
                    )],
                )
            }
            ("POST", [_, _, "merge-upstream"]) => {
                let f = f();
                change(
                    "github.repos.mergeUpstream",
                    vec![branch_or(f.get("branch"), DEFAULT_BRANCH, Update)],
                )
            }
            ("POST", [_, _, "branches", branch, "rename"]) => {
                let f = f();
                let mut refs = vec![known(branch_ref(branch), Delete)];
                refs.push(branch_or(
                    f.get("new_name"),
                    "the new name is in the body",
                    Create,
                ));
                change("github.repos.renameBranch", refs)
            }
            ("POST", [_, _, "branches"]) => {
                // Gitea creates branches here.
                let f = f();
                change(
                    "gitea.repos.createBranch",
                    vec![branch_or(
                        f.get("new_branch_name"),
                        "the new branch is named in the body",
                        Create,
                    )],
                )
            }
            ("DELETE", [_, _, "branches", name @ ..]) if !name.is_empty() => change(
                "gitea.repos.deleteBranch",
                vec![known(branch_ref(&name.join("/")), Delete)],
            ),
            _ => None,
        };
    }
    // GitLab: /api/v4/projects/ID/…
    if let ["api", "v4", "projects", _, rest @ ..] = segs.as_slice() {
        return match (method.as_str(), rest) {
            ("PUT", ["merge_requests", _, "merge"]) => change(
                "gitlab.merge_requests.merge",
                vec![unknown(MERGE_BASE, Update)],
            ),
            ("PUT", ["merge_requests", _, "rebase"]) => change(
                "gitlab.merge_requests.rebase",
                vec![unknown(PR_HEAD, Update)],
            ),
            ("POST", ["repository", "commits"]) => {
                let f = f();
                let refs = match f.get("start_branch").filter(|s| !s.is_empty()) {
                    Some(_) => vec![branch_or(
                        f.get("branch"),
                        "the branch is named in the body",
                        Create,
                    )],
                    None => vec![branch_or(
                        f.get("branch"),
                        "the branch is named in the body",
                        Update,
                    )],
                };
                change("gitlab.repository.commits.create", refs)
            }
            ("POST" | "PUT" | "DELETE", ["repository", "files", file @ ..]) if !file.is_empty() => {
                let f = f();
                change(
                    "gitlab.repository.files",
                    vec![branch_or(
                        f.get("branch"),
                        "the branch is named in the body",
                        Update,
                    )],
                )
            }
            ("POST", ["repository", "branches"]) => {
                let f = f();
                change(
                    "gitlab.repository.branches.create",
                    vec![branch_or(
                        f.get("branch"),
                        "the new branch is named in the request",
                        Create,
                    )],
                )
            }
            ("DELETE", ["repository", "branches", name @ ..]) if !name.is_empty() => change(
                "gitlab.repository.branches.delete",
                vec![known(branch_ref(&name.join("/")), Delete)],
            ),
            ("POST", ["repository", "tags"]) => {
                let f = f();
                let refs = vec![match f.get("tag_name").filter(|t| !t.is_empty()) {
                    Some(t) => known(format!("refs/tags/{t}"), Create),
                    None => unknown("the new tag is named in the request", Create),
                }];
                change("gitlab.repository.tags.create", refs)
            }
            ("DELETE", ["repository", "tags", name @ ..]) if !name.is_empty() => change(
                "gitlab.repository.tags.delete",
                vec![known(format!("refs/tags/{}", name.join("/")), Delete)],
            ),
            ("POST", ["repository", "merged_branches"])
            | ("DELETE", ["repository", "merged_branches"]) => change(
                "gitlab.repository.merged_branches.delete",
                vec![unknown("it deletes every merged branch", Delete)],
            ),
            _ => None,
        };
    }
    // Secure Source Manager: …/repositories/R/pullRequests/N:merge
    if let Some(last) = segs.last()
        && method == "POST"
        && segs.contains(&"pullRequests")
        && last.ends_with(":merge")
    {
        return change(
            "securesourcemanager.pullRequests.merge",
            vec![unknown(MERGE_BASE, Update)],
        );
    }
    // GraphQL: the mutations that move refs.
    if method == "POST" && segs.last() == Some(&"graphql") {
        let text = body.map(String::from_utf8_lossy).unwrap_or_default();
        const MUTATIONS: &[&str] = &[
            "mergePullRequest",
            "createCommitOnBranch",
            "updateRef",
            "updateRefs",
            "createRef",
            "deleteRef",
            "mergeBranch",
            "updatePullRequestBranch",
            "enablePullRequestAutoMerge",
            "revertPullRequest",
            "mergeRequestAccept",
            "commitCreate",
        ];
        if body.is_none() || body.is_some_and(|b| b.len() > MAX_BODY) {
            // Not read: every GraphQL call may be a mutation.
            return change(
                "graphql",
                vec![unknown(
                    "a GraphQL body that was not read may move refs",
                    Update,
                )],
            );
        }
        if MUTATIONS.iter().any(|m| text.contains(m)) {
            return change(
                "graphql.mutation",
                vec![unknown(
                    "GraphQL ref mutations name their refs by node id",
                    Update,
                )],
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(
        method: &str,
        target: &str,
        body: &str,
    ) -> Option<Vec<(Option<String>, RefUpdateKind)>> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        ref_changes(method, path, query, Some(body.as_bytes()))
            .map(|c| c.refs.into_iter().map(|r| (r.name, r.kind)).collect())
    }

    fn main_ref(kind: RefUpdateKind) -> Option<Vec<(Option<String>, RefUpdateKind)>> {
        Some(vec![(Some("refs/heads/main".to_owned()), kind)])
    }

    #[test]
    fn github_rest_calls_that_move_refs() {
        use RefUpdateKind::*;
        assert_eq!(
            refs(
                "PUT",
                "/repos/o/r/contents/src/lib.rs",
                r#"{"message":"m","content":"eA==","branch":"main"}"#
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs(
                "DELETE",
                "/repos/o/r/contents/README.md",
                r#"{"branch":"refs/heads/main"}"#
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs(
                "PATCH",
                "/repos/o/r/git/refs/heads/main",
                r#"{"sha":"abc","force":true}"#
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs("PATCH", "/api/v3/repos/o/r/git/refs/heads%2Fmain", "{}"),
            main_ref(Update)
        );
        assert_eq!(
            refs("DELETE", "/repos/o/r/git/refs/tags/v1", ""),
            Some(vec![(Some("refs/tags/v1".into()), Delete)])
        );
        assert_eq!(
            refs(
                "POST",
                "/repos/o/r/git/refs",
                r#"{"ref":"refs/heads/main","sha":"abc"}"#
            ),
            main_ref(Create)
        );
        assert_eq!(
            refs(
                "POST",
                "/repos/o/r/merges",
                r#"{"base":"main","head":"feature"}"#
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs("POST", "/repos/o/r/merge-upstream", r#"{"branch":"main"}"#),
            main_ref(Update)
        );
        // The merged pull request's base is not in the request.
        let merge = refs(
            "PUT",
            "/repos/o/r/pulls/7/merge",
            r#"{"merge_method":"squash"}"#,
        )
        .unwrap();
        assert_eq!(merge, vec![(None, Update)]);
        // A contents update without a branch goes to the default branch: unknown here.
        assert_eq!(
            refs("PUT", "/repos/o/r/contents/x", r#"{"message":"m"}"#),
            Some(vec![(None, Update)])
        );
        // Spellings of the same path.
        assert_eq!(
            refs("put", "//repos/o/r/./contents/x", r#"{"branch":"main"}"#),
            main_ref(Update)
        );
        // Reads change nothing.
        assert_eq!(refs("GET", "/repos/o/r/contents/x", ""), None);
        assert_eq!(refs("GET", "/repos/o/r/git/refs/heads/main", ""), None);
        assert_eq!(refs("POST", "/repos/o/r/issues", "{}"), None);
    }

    #[test]
    fn gitlab_and_gitea_calls_that_move_refs() {
        use RefUpdateKind::*;
        assert_eq!(
            refs(
                "POST",
                "/api/v4/projects/12/repository/commits",
                r#"{"branch":"main","commit_message":"m","actions":[]}"#
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs(
                "PUT",
                "/api/v4/projects/g%2Fp/repository/files/a%2Fb.txt",
                "branch=main&content=x&commit_message=m"
            ),
            main_ref(Update)
        );
        assert_eq!(
            refs(
                "POST",
                "/api/v4/projects/12/repository/branches?branch=main&ref=dev",
                ""
            ),
            main_ref(Create)
        );
        assert_eq!(
            refs("DELETE", "/api/v4/projects/12/repository/branches/main", ""),
            main_ref(Delete)
        );
        assert_eq!(
            refs(
                "POST",
                "/api/v4/projects/12/repository/tags?tag_name=v1&ref=main",
                ""
            ),
            Some(vec![(Some("refs/tags/v1".into()), Create)])
        );
        assert_eq!(
            refs("PUT", "/api/v4/projects/12/merge_requests/3/merge", ""),
            Some(vec![(None, Update)])
        );
        assert_eq!(
            refs(
                "POST",
                "/api/v1/repos/o/r/pulls/3/merge",
                r#"{"Do":"merge"}"#
            ),
            Some(vec![(None, Update)])
        );
        assert_eq!(
            refs(
                "POST",
                "/api/v1/repos/o/r/contents/x",
                r#"{"branch":"dev","new_branch":"main"}"#
            ),
            main_ref(Create)
        );
        assert_eq!(
            refs("GET", "/api/v4/projects/12/repository/branches", ""),
            None
        );
    }

    #[test]
    fn graphql_and_secure_source_manager() {
        assert_eq!(
            refs(
                "POST",
                "/graphql",
                r#"{"query":"mutation { mergePullRequest(input: {pullRequestId: \"x\"}) { clientMutationId } }"}"#
            ),
            Some(vec![(None, RefUpdateKind::Update)])
        );
        assert_eq!(
            refs(
                "POST",
                "/graphql",
                r#"{"query":"query { viewer { login } }"}"#
            ),
            None
        );
        assert_eq!(
            refs(
                "POST",
                "/v1/projects/p/locations/us/repositories/r/pullRequests/4:merge",
                "{}"
            ),
            Some(vec![(None, RefUpdateKind::Update)])
        );
        assert!(needs_body("PUT", "/repos/o/r/contents/x"));
        assert!(!needs_body("PATCH", "/repos/o/r/git/refs/heads/main"));
    }
}

//! `api.git.test`: a code host's pull-request API, enough for an agent to open a pull request
//! after pushing a branch (`POST /repos/{owner}/{repo}/pulls`, GitHub's shape). The head branch
//! must exist in the served repository, as it must on a real host; pull requests are kept in
//! memory for `GET /repos/{owner}/{repo}/pulls`.

use super::server::{Body, full};
use anyhow::{Context, Result};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Mutex;

/// The pull requests opened so far.
#[derive(Default)]
pub(crate) struct Pulls {
    opened: Mutex<Vec<Value>>,
}

#[derive(Deserialize)]
struct NewPull {
    title: String,
    head: String,
    base: String,
    #[serde(default)]
    body: String,
}

impl Pulls {
    pub(crate) async fn respond(
        &self,
        request: Request<Incoming>,
        git_root: &Path,
    ) -> Result<Response<Body>> {
        let path: Vec<String> = request
            .uri()
            .path()
            .trim_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        let ["repos", owner, repo, "pulls"] =
            path.iter().map(String::as_str).collect::<Vec<_>>()[..]
        else {
            return Ok(answer(
                StatusCode::NOT_FOUND,
                json!({"message": "Not Found"}),
            ));
        };
        if !request.headers().contains_key(AUTHORIZATION) {
            return Ok(answer(
                StatusCode::UNAUTHORIZED,
                json!({"message": "Requires authentication"}),
            ));
        }
        let (owner, repo) = (owner.to_string(), repo.to_string());
        match *request.method() {
            Method::GET => {
                let opened = self.opened.lock().expect("pulls lock").clone();
                Ok(answer(StatusCode::OK, Value::Array(opened)))
            }
            Method::POST => {
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .context("reading the request body")?
                    .to_bytes();
                let new: NewPull = match serde_json::from_slice(&body) {
                    Ok(new) => new,
                    Err(e) => {
                        return Ok(answer(
                            StatusCode::BAD_REQUEST,
                            json!({"message": format!("Problems parsing JSON: {e}")}),
                        ));
                    }
                };
                let Some(sha) = branch_head(git_root, &new.head).await? else {
                    return Ok(answer(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({
                            "message": "Validation Failed",
                            "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]
                        }),
                    ));
                };
                let mut opened = self.opened.lock().expect("pulls lock");
                let number = opened.len() + 1;
                let pull = json!({
                    "number": number,
                    "state": "open",
                    "title": new.title,
                    "body": new.body,
                    "html_url": format!("https://git.test/{owner}/{repo}/pull/{number}"),
                    "head": {"ref": new.head, "sha": sha},
                    "base": {"ref": new.base},
                });
                opened.push(pull.clone());
                Ok(answer(StatusCode::CREATED, pull))
            }
            _ => Ok(answer(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"message": "Method Not Allowed"}),
            )),
        }
    }
}

/// The commit a branch of the served repository points at, if it exists.
async fn branch_head(git_root: &Path, branch: &str) -> Result<Option<String>> {
    let out = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_root.join(super::REPO_DIR))
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}^{{commit}}"))
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .await
        .context("running git rev-parse")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

fn answer(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(format!("{body}\n")))
        .expect("static response parts are valid")
}

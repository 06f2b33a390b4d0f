//! Git smart-HTTP by running `git http-backend` as a CGI program: the request becomes its
//! environment and stdin (gzip bodies pass through, `HTTP_CONTENT_ENCODING` tells it), and its
//! stdout — a `Status:` line, headers, a blank line, the body — becomes the response, streamed.

use super::server::{Body, BoxError, ConnInfo};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The largest CGI header block accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Run `git http-backend` for one request.
pub(crate) async fn serve(
    request: Request<Incoming>,
    git_root: &Path,
    info: &ConnInfo,
) -> Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let header = |name: HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", crate::netns::DEFAULT_PATH)
        // No user or system configuration: the repository's own config decides.
        .env("HOME", git_root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header(CONTENT_TYPE).unwrap_or_default())
        .env("REMOTE_ADDR", info.peer.ip().to_string())
        .env("REMOTE_USER", remote_user(&parts.headers))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(length) = header(CONTENT_LENGTH) {
        command.env("CONTENT_LENGTH", length);
    }
    if let Some(encoding) = header(CONTENT_ENCODING) {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(protocol) = header(HeaderName::from_static("git-protocol")) {
        command.env("HTTP_GIT_PROTOCOL", protocol);
    }
    let mut child = command
        .spawn()
        .context("starting git http-backend (is git installed?)")?;
    let mut stdin = child
        .stdin
        .take()
        .context("git http-backend has no stdin")?;
    let stdout = child
        .stdout
        .take()
        .context("git http-backend has no stdout")?;

    // Feed the body while the response streams: git may answer before it has read everything.
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref()
                        && stdin.write_all(data).await.is_err()
                    {
                        // git stopped reading; it says why on stderr.
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("cassette-e2e upstreams: reading a git request body: {e}");
                    return;
                }
            }
        }
        // Dropping stdin closes it: git reads to EOF when there is no CONTENT_LENGTH.
    });

    let mut reader = BufReader::new(stdout);
    let (status, headers) = read_cgi_headers(&mut reader).await?;
    let mut response = Response::new(streamed(reader, child));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// Who git records as the pusher: the basic-auth user name, when there is one.
fn remote_user(headers: &http::HeaderMap) -> String {
    use base64::Engine;
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(user, _)| user.to_string()))
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "anonymous".into())
}

/// Parse the CGI header block: `Status: 200 OK` and `Name: value` lines up to a blank line.
async fn read_cgi_headers<R>(reader: &mut R) -> Result<(StatusCode, http::HeaderMap)>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut status = StatusCode::OK;
    let mut headers = http::HeaderMap::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .await
            .context("reading git http-backend's headers")?;
        if read == 0 {
            bail!("git http-backend ended before its headers did (see its stderr)");
        }
        total += read;
        if total > MAX_HEADER_BYTES {
            bail!("git http-backend's headers are longer than {MAX_HEADER_BYTES} bytes");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line.split_once(':').with_context(|| {
            format!("git http-backend wrote a header without a colon: {line:?}")
        })?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .with_context(|| format!("git http-backend wrote a bad status: {value:?}"))?;
        } else {
            headers.append(
                HeaderName::try_from(name.trim())?,
                HeaderValue::try_from(value)?,
            );
        }
    }
}

/// The rest of the CGI output as a streamed body; the child is reaped when it ends.
fn streamed<R>(mut reader: R, mut child: tokio::process::Child) -> Body
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                        .await
                        .is_err()
                    {
                        // The client went away; the child is killed on drop.
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        match child.wait().await {
            Ok(status) if !status.success() => {
                eprintln!("cassette-e2e upstreams: git http-backend exited with {status}");
            }
            Ok(_) => {}
            Err(e) => eprintln!("cassette-e2e upstreams: waiting for git http-backend: {e}"),
        }
    });
    ChannelBody(rx).map_err(|e| Box::new(e) as BoxError).boxed()
}

/// A body fed by a channel of chunks.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cgi_headers_are_parsed() {
        let output = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nExpires: x\r\n\r\nbody";
        let mut reader = BufReader::new(&output[..]);
        let (status, headers) = read_cgi_headers(&mut reader).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "body");
    }

    #[tokio::test]
    async fn missing_status_means_ok_and_truncation_is_an_error() {
        let mut reader = BufReader::new(&b"Content-Type: application/x-git\n\n"[..]);
        let (status, _) = read_cgi_headers(&mut reader).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let mut cut = BufReader::new(&b"Content-Type: a\n"[..]);
        assert!(read_cgi_headers(&mut cut).await.is_err());
    }

    #[test]
    fn the_pusher_is_the_basic_auth_user() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(remote_user(&headers), "anonymous");
        // "alice:secret"
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        assert_eq!(remote_user(&headers), "alice");
    }
}

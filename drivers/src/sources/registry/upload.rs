//! Blob uploads into a started upload session: one streamed PUT for small blobs, PATCH
//! chunks (each resumed from the offset the registry reports after a failure) for large
//! ones.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::Scope;
use super::client::{backoff, registry_error, Body, Client, Request, MAX_ATTEMPTS};
use crate::{ByteStream, Error, ErrorKind, Result};

/// One blob upload: where it goes and what it is, for requests and messages.
pub(crate) struct Upload<'a> {
    /// The registry client.
    pub client: &'a Client,
    /// The repository uploaded to.
    pub repo: &'a str,
    /// `blob NAME@DIGEST`, for messages.
    pub what: &'a str,
    /// The blob's digest, as the registry expects it in `?digest=`.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
}

impl Upload<'_> {
    /// Sends `body` to the session at `location` in one PUT and completes it.
    pub async fn monolithic(&self, location: Url, body: ByteStream) -> Result<()> {
        let failure = Arc::new(Mutex::new(None));
        let counted = exact_length(
            body,
            self.size,
            self.what.to_string(),
            self.client.source.clone(),
            failure.clone(),
        );
        let req = Request::new(
            Method::PUT,
            self.with_digest(location),
            Scope::push(self.repo),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(Body::Stream(Some(Box::pin(counted)), self.size));
        let sent = self.client.send(req).await;
        if let Some(e) = failure.lock().expect("upload failure lock").take() {
            return Err(e);
        }
        self.finished(sent?).await
    }

    /// Sends `body` to the session at `location` in PATCH chunks of `chunk` bytes (each
    /// held in memory so a failed chunk resumes where the registry says it stopped), then
    /// completes it with an empty PUT.
    pub async fn chunked(&self, mut location: Url, mut body: ByteStream, chunk: u64) -> Result<()> {
        let mut pending = Bytes::new();
        let mut offset = 0u64;
        while offset < self.size {
            let want = chunk.min(self.size - offset) as usize;
            let buf = self
                .next_chunk(&mut body, &mut pending, want, offset)
                .await?;
            location = self.send_chunk(location, offset, buf).await?;
            offset += want as u64;
        }
        if !pending.is_empty() || body.next().await.is_some() {
            return Err(self.invalid(format!("body longer than {} bytes", self.size)));
        }
        let req = Request::new(
            Method::PUT,
            self.with_digest(location),
            Scope::push(self.repo),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(Body::Bytes(Bytes::new()));
        let resp = self.client.send(req).await?;
        self.finished(resp).await
    }

    /// Reads the next `want` bytes of the body.
    async fn next_chunk(
        &self,
        body: &mut ByteStream,
        pending: &mut Bytes,
        want: usize,
        offset: u64,
    ) -> Result<Bytes> {
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            if pending.is_empty() {
                *pending = match body.next().await {
                    Some(chunk) => chunk?,
                    None => {
                        let seen = offset + buf.len() as u64;
                        return Err(
                            self.invalid(format!("body ended after {seen} of {} bytes", self.size))
                        );
                    }
                };
            }
            let n = pending.len().min(want - buf.len());
            buf.extend_from_slice(&pending.split_to(n));
        }
        Ok(buf.freeze())
    }

    /// PATCHes `buf` (the blob's bytes from `offset`) into the session, resuming from the
    /// registry's committed offset after a failure; returns the session's next location.
    async fn send_chunk(&self, mut location: Url, offset: u64, buf: Bytes) -> Result<Url> {
        let end = offset + buf.len() as u64;
        let mut committed = offset;
        let mut failures = 0;
        while committed < end {
            let part = buf.slice((committed - offset) as usize..);
            let len = part.len() as u64;
            let req = Request::new(Method::PATCH, location.clone(), Scope::push(self.repo))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, &format!("{committed}-{}", end - 1))
                .body(Body::Stream(
                    Some(Box::pin(futures::stream::iter([Ok(part)]))),
                    len,
                ));
            let failure = match self.client.send(req).await {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    location = next_location(&resp).unwrap_or(location);
                    let now = committed_bytes(&resp).unwrap_or(end);
                    if !(offset..=end).contains(&now) {
                        return Err(self.invalid(format!(
                            "registry reports {now} bytes after the chunk {offset}-{}",
                            end - 1
                        )));
                    }
                    if now > committed {
                        committed = now;
                        continue;
                    }
                    self.client.error(
                        ErrorKind::Unavailable,
                        format!(
                            "uploading {}: the registry accepted no bytes from {committed}",
                            self.what
                        ),
                    )
                }
                Ok(resp) if is_transient(resp.status()) => {
                    self.client
                        .status_error(resp, &format!("uploading {}", self.what))
                        .await
                }
                Ok(resp) => {
                    return Err(self
                        .client
                        .status_error(resp, &format!("uploading {}", self.what))
                        .await)
                }
                Err(e) if e.kind == ErrorKind::Unavailable => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            if failures >= MAX_ATTEMPTS {
                return Err(failure);
            }
            tokio::time::sleep(backoff(failures - 1)).await;
            let (next, have) = self.status(location).await?;
            if !(offset..=end).contains(&have) {
                return Err(self.client.error(
                    ErrorKind::Unavailable,
                    format!(
                        "uploading {}: cannot resume: the registry has {have} bytes, this chunk is {offset}-{}",
                        self.what,
                        end - 1
                    ),
                ));
            }
            tracing::debug!(what = self.what, from = have, "resuming upload chunk");
            location = next;
            committed = have;
        }
        Ok(location)
    }

    /// The session's location and how many bytes it holds (`GET` on the upload URL).
    async fn status(&self, location: Url) -> Result<(Url, u64)> {
        let resp = self
            .client
            .send(Request::new(
                Method::GET,
                location.clone(),
                Scope::push(self.repo),
            ))
            .await?;
        if resp.status() != StatusCode::NO_CONTENT && !resp.status().is_success() {
            return Err(self
                .client
                .status_error(resp, &format!("status of upload of {}", self.what))
                .await);
        }
        Ok((
            next_location(&resp).unwrap_or(location),
            committed_bytes(&resp).unwrap_or(0),
        ))
    }

    /// Judges the answer to the PUT that completes an upload.
    async fn finished(&self, resp: Response) -> Result<()> {
        match resp.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::BAD_REQUEST => {
                let detail = registry_error(resp).await;
                let kind = if detail.contains("DIGEST_INVALID") {
                    ErrorKind::Corrupt
                } else {
                    ErrorKind::Invalid
                };
                Err(self
                    .client
                    .error(kind, format!("uploading {}: rejected{detail}", self.what)))
            }
            _ => Err(self
                .client
                .status_error(resp, &format!("uploading {}", self.what))
                .await),
        }
    }

    fn with_digest(&self, mut location: Url) -> Url {
        location
            .query_pairs_mut()
            .append_pair("digest", &self.digest);
        location
    }

    fn invalid(&self, why: String) -> Error {
        self.client.error(
            ErrorKind::Invalid,
            format!("uploading {}: {why}", self.what),
        )
    }
}

/// Whether an upload status is worth resuming after.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::RANGE_NOT_SATISFIABLE
}

/// The session URL a response names (`Location`, relative to the request URL).
pub(crate) fn next_location(resp: &Response) -> Option<Url> {
    let loc = resp.headers().get(LOCATION)?.to_str().ok()?;
    resp.url().join(loc).ok()
}

/// Bytes the session holds, from a `Range: 0-N` answer (distribution writes `0-0` for an
/// empty session too; that is read as nothing held).
fn committed_bytes(resp: &Response) -> Option<u64> {
    let range = resp.headers().get("range")?.to_str().ok()?;
    let range = range.trim().trim_start_matches("bytes=");
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    Some(if start == 0 && end == 0 { 0 } else { end + 1 })
}

/// Passes `body` through, failing (and recording the error in `failure`) if it does not
/// yield exactly `size` bytes.
fn exact_length(
    body: ByteStream,
    size: u64,
    what: String,
    source: String,
    failure: Arc<Mutex<Option<Error>>>,
) -> impl Stream<Item = Result<Bytes>> + Send {
    futures::stream::unfold((body, 0u64, false), move |(mut body, seen, done)| {
        let (what, source, failure) = (what.clone(), source.clone(), failure.clone());
        async move {
            if done {
                return None;
            }
            let fail = |e: Error| {
                *failure.lock().expect("upload failure lock") =
                    Some(Error::new(e.kind, &e.source_name, e.message.clone()));
                e
            };
            match body.next().await {
                Some(Ok(b)) => {
                    let seen = seen + b.len() as u64;
                    if seen > size {
                        let e = fail(Error::new(
                            ErrorKind::Invalid,
                            &source,
                            format!("uploading {what}: body longer than {size} bytes"),
                        ));
                        return Some((Err(e), (body, seen, true)));
                    }
                    Some((Ok(b), (body, seen, false)))
                }
                Some(Err(e)) => {
                    let e = fail(e);
                    Some((Err(e), (body, seen, true)))
                }
                None if seen < size => {
                    let e = fail(Error::new(
                        ErrorKind::Invalid,
                        &source,
                        format!("uploading {what}: body ended after {seen} of {size} bytes"),
                    ));
                    Some((Err(e), (body, seen, true)))
                }
                None => None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::registry::tests::{chunks, collect};

    #[tokio::test]
    async fn exact_length_refuses_short_and_long_bodies() {
        let data: &[&'static [u8]] = &[b"abc", b"def"];
        for (size, needle) in [(5, "longer than 5"), (7, "ended after 6 of 7")] {
            let failure = Arc::new(Mutex::new(None));
            let s = exact_length(
                chunks(data),
                size,
                "blob x".into(),
                "src".into(),
                failure.clone(),
            );
            let items: Vec<Result<Bytes>> = s.collect().await;
            let err = items.into_iter().find_map(|r| r.err()).expect("an error");
            assert!(err.message.contains(needle), "{err}");
            assert!(failure.lock().unwrap().is_some());
        }
        let failure = Arc::new(Mutex::new(None));
        let s = exact_length(
            chunks(data),
            6,
            "blob x".into(),
            "src".into(),
            failure.clone(),
        );
        assert_eq!(collect(s).await, b"abcdef");
        assert!(failure.lock().unwrap().is_none());
    }
}

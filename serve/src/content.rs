//! Reading: the `/v2/` API (SERVE-1..8): manifests, blobs with ranges, tags, catalog,
//! signature sets under their tags, referrers. Pushes are dispatched to [`crate::push`].

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::{media, Digest};
use ferry_drivers::transfer::signatures::{signature_tag, SIGNATURE_CONFIG_MEDIA_TYPE};

use crate::error::{ApiError, ApiResult};
use crate::names::{page, parse_digest, validate_repository, validate_tag, Catalog};
use crate::stored::{insert, read_manifest, send_blob, signature_set};
use crate::{push, App};

/// `GET /v2/`: the API is here (SERVE-1).
pub(crate) async fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// What a `/v2/<path>` request addresses.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

/// Splits a `/v2/` path into repository and endpoint, from the right (repositories have
/// slashes).
fn route(path: &str) -> Option<Route<'_>> {
    if path == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(repo) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(repo));
    }
    if let Some(repo) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(repo));
    }
    let (head, last) = path.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    if let Some(repo) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload(repo, last));
    }
    if let Some(repo) = head.strip_suffix("/manifests") {
        return Some(Route::Manifest(repo, last));
    }
    if let Some(repo) = head.strip_suffix("/blobs") {
        return Some(Route::Blob(repo, last));
    }
    if let Some(repo) = head.strip_suffix("/referrers") {
        return Some(Route::Referrers(repo, last));
    }
    None
}

/// `/v2/<path>`: every endpoint below `/v2/`.
pub(crate) async fn v2(
    State(app): State<App>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = route(&path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint /v2/{path}"),
        )
        .into_response();
    };
    let repo = match route {
        Route::Catalog => "",
        Route::Tags(r)
        | Route::Manifest(r, _)
        | Route::Blob(r, _)
        | Route::UploadStart(r)
        | Route::Upload(r, _)
        | Route::Referrers(r, _) => r,
    };
    if route != Route::Catalog {
        if let Err(e) = validate_repository(repo) {
            return e.into_response();
        }
    }
    let head = method == Method::HEAD;
    let ns = query.get("ns").map(String::as_str);
    let mirrored = match (&app.0.mirror, &route) {
        (Some(_), Route::Manifest(repo, _) | Route::Blob(repo, _)) => {
            match crate::mirror::answers(&app, repo, ns).await {
                Ok(answers) => answers,
                Err(e) => return e.into_response(),
            }
        }
        _ => false,
    };
    if let Some(mirror) = app.0.mirror.clone().filter(|_| mirrored) {
        let through = match (&route, &method) {
            (&Route::Manifest(repo, reference), &Method::GET | &Method::HEAD) => {
                Some(crate::mirror::manifest(&mirror, repo, reference, ns, head).await)
            }
            (&Route::Blob(repo, digest), &Method::GET | &Method::HEAD) => Some(
                crate::mirror::blob(
                    &app,
                    &mirror,
                    repo,
                    digest,
                    headers.get(header::RANGE),
                    ns,
                    head,
                )
                .await,
            ),
            _ => None,
        };
        if let Some(result) = through {
            return result.unwrap_or_else(IntoResponse::into_response);
        }
    }
    let result = match (route, &method) {
        (Route::Catalog, &Method::GET) => catalog(&app, &query).await,
        (Route::Tags(repo), &Method::GET) => tags(&app, repo, &query).await,
        (Route::Manifest(repo, reference), &Method::GET | &Method::HEAD) => {
            manifest(&app, repo, reference, head).await
        }
        (Route::Manifest(repo, reference), &Method::PUT) => {
            push::put_manifest(&app, repo, reference, &headers, body).await
        }
        (Route::Blob(repo, digest), &Method::GET | &Method::HEAD) => {
            blob(&app, repo, digest, &headers, head).await
        }
        (Route::UploadStart(repo), &Method::POST) => {
            push::start_upload(&app, repo, &query, body).await
        }
        (Route::Upload(repo, id), &Method::PATCH) => {
            push::patch_upload(&app, repo, id, &headers, body).await
        }
        (Route::Upload(repo, id), &Method::PUT) => {
            push::finish_upload(&app, repo, id, &query, body).await
        }
        (Route::Upload(repo, id), &Method::GET) => push::upload_status(&app, repo, id).await,
        (Route::Upload(repo, id), &Method::DELETE) => push::cancel_upload(&app, repo, id).await,
        (Route::Referrers(repo, digest), &Method::GET) => {
            referrers(&app, repo, digest, &query).await
        }
        (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => {
            Err(ApiError::unsupported("deleting manifests or blobs"))
        }
        (_, method) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not allowed on /v2/{path}"),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The repository, or `NAME_UNKNOWN` if the store names no image in it (SERVE-2).
async fn known_repository(app: &App, repo: &str) -> ApiResult<std::sync::Arc<Catalog>> {
    let catalog = app.catalog().await?;
    if !catalog.has_repository(repo) {
        return Err(ApiError::name_unknown(repo));
    }
    Ok(catalog)
}

/// `GET /v2/_catalog[?n=&last=]` (SERVE-6).
async fn catalog(app: &App, query: &HashMap<String, String>) -> ApiResult<Response> {
    let all = app.catalog().await?.repositories();
    let (n, last) = paging(query)?;
    let (repos, more) = page(all, n, last);
    let link = more.then(|| next_link("/v2/_catalog", n, repos.last()));
    Ok(json_page(
        serde_json::json!({ "repositories": repos }),
        link,
    ))
}

/// `GET /v2/<repo>/tags/list[?n=&last=]` (SERVE-6).
async fn tags(app: &App, repo: &str, query: &HashMap<String, String>) -> ApiResult<Response> {
    let catalog = known_repository(app, repo).await?;
    let (n, last) = paging(query)?;
    let (tags, more) = page(catalog.tags(repo), n, last);
    let link = more.then(|| next_link(&format!("/v2/{repo}/tags/list"), n, tags.last()));
    Ok(json_page(
        serde_json::json!({ "name": repo, "tags": tags }),
        link,
    ))
}

fn paging(query: &HashMap<String, String>) -> ApiResult<(Option<usize>, Option<&str>)> {
    let n = match query.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("invalid page size n={n:?}"),
            )
        })?),
        None => None,
    };
    Ok((n, query.get("last").map(String::as_str)))
}

fn next_link(path: &str, n: Option<usize>, last: Option<&String>) -> String {
    let mut link = format!("<{path}?");
    if let Some(n) = n {
        link.push_str(&format!("n={n}&"));
    }
    link.push_str(&format!(
        "last={}>; rel=\"next\"",
        last.map_or("", String::as_str)
    ));
    link
}

fn json_page(body: serde_json::Value, link: Option<String>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, link);
    }
    resp
}

/// `GET|HEAD /v2/<repo>/manifests/<tag|digest>` (SERVE-3, SERVE-5).
async fn manifest(app: &App, repo: &str, reference: &str, head: bool) -> ApiResult<Response> {
    let catalog = known_repository(app, repo).await?;
    let repo = repo.to_string();
    let body = if reference.contains(':') {
        let digest = parse_digest(reference)?;
        let subjects: Vec<Digest> = catalog.records(&repo).map(|r| r.digest.clone()).collect();
        let app2 = app.clone();
        app.blocking(move |store| match read_manifest(&app2, store, &digest)? {
            Some(m) => Ok(m),
            None => {
                for subject in dedup(subjects) {
                    if let Some(set) = signature_set(store, &subject)? {
                        if set.digest == digest {
                            return Ok(set);
                        }
                    }
                }
                Err(ApiError::manifest_unknown(format!("{repo}@{digest}")))
            }
        })
        .await?
    } else {
        validate_tag(reference)?;
        let tag = reference.to_string();
        match catalog.tagged(&repo, &tag) {
            Some(record) => {
                let digest = record.digest.clone();
                let app2 = app.clone();
                app.blocking(move |store| {
                    read_manifest(&app2, store, &digest)?.ok_or_else(|| {
                        ApiError::internal(format!(
                            "{repo}:{tag} names {digest}, which is missing from the store"
                        ))
                    })
                })
                .await?
            }
            None => {
                // The signature tag of a manifest this repository names (SERVE-5).
                let subject = catalog
                    .records(&repo)
                    .map(|r| r.digest.clone())
                    .find(|d| signature_tag(d) == tag);
                let what = format!("{repo}:{tag}");
                let Some(subject) = subject else {
                    return Err(ApiError::manifest_unknown(what));
                };
                app.blocking(move |store| {
                    signature_set(store, &subject)?.ok_or_else(|| ApiError::manifest_unknown(what))
                })
                .await?
            }
        }
    };
    Ok(body.response(head))
}

fn dedup(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by_key(|a| a.to_string());
    digests.dedup();
    digests
}

/// `GET|HEAD /v2/<repo>/blobs/<digest>` (SERVE-4).
async fn blob(
    app: &App,
    repo: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    known_repository(app, repo).await?;
    send_blob(app, &digest, headers.get(header::RANGE), head).await
}

/// `GET /v2/<repo>/referrers/<digest>[?artifactType=]`: the signature set of a manifest
/// the repository names, as an index (SERVE-7).
async fn referrers(
    app: &App,
    repo: &str,
    digest: &str,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    let catalog = known_repository(app, repo).await?;
    let named = catalog.records(repo).any(|r| r.digest == digest);
    let set = if named {
        let subject = digest.clone();
        app.blocking(move |store| signature_set(store, &subject))
            .await?
    } else {
        None
    };
    let filter = query.get("artifactType");
    let manifests: Vec<serde_json::Value> = set
        .into_iter()
        .filter(|_| filter.is_none_or(|t| t == SIGNATURE_CONFIG_MEDIA_TYPE))
        .map(|set| {
            serde_json::json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": set.digest.to_string(),
                "size": set.bytes.len(),
                "artifactType": SIGNATURE_CONFIG_MEDIA_TYPE,
            })
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media::OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        insert(resp.headers_mut(), "oci-filters-applied", "artifactType");
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_repositories_with_slashes() {
        assert_eq!(route("_catalog"), Some(Route::Catalog));
        assert_eq!(route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            route("a/b/manifests/latest"),
            Some(Route::Manifest("a/b", "latest"))
        );
        assert_eq!(
            route("a/blobs/sha256:ab"),
            Some(Route::Blob("a", "sha256:ab"))
        );
        assert_eq!(route("a/b/blobs/uploads/"), Some(Route::UploadStart("a/b")));
        assert_eq!(
            route("a/b/blobs/uploads/xyz"),
            Some(Route::Upload("a/b", "xyz"))
        );
        assert_eq!(
            route("a/referrers/sha256:ab"),
            Some(Route::Referrers("a", "sha256:ab"))
        );
        // A repository may end in a component named like an endpoint.
        assert_eq!(
            route("blobs/manifests/x"),
            Some(Route::Manifest("blobs", "x"))
        );
        assert_eq!(route("a/b"), None);
        assert_eq!(route("a/manifests/"), None);
    }
}

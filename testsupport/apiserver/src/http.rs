//! Request routing and the REST verbs: discovery, get, list (paged), watch, create, update,
//! patch, delete. Every failure is answered with a `Status` object and the matching HTTP code.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{RequestRecord, Shared};
use crate::status::ApiError;
use crate::store::ContinueToken;
use crate::watch::{WatchRequest, WatchStream};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long a list or watch waits for a resourceVersion newer than the store's.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

/// Entry point for every request; never fails, never panics on request data.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match route(shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    Ok(resp)
}

/// A parsed request path.
enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    ResourceList(String, String),
    Resource(ResourcePath),
}

struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_prefix: bool,
}

fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Some(Route::Health),
        ["api"] => return Some(Route::Api),
        ["apis"] => return Some(Route::Apis),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["api", v] => return Some(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g, v] => return Some(Route::ResourceList(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let own = |s: &&str| s.to_string();
    let (namespace, rest) = match rest {
        ["namespaces", ns, third, ..] if !matches!(*third, "status" | "finalize") => {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [p] => (own(p), None, None),
        [p, n] => (own(p), Some(own(n)), None),
        [p, n, s] => (own(p), Some(own(n)), Some(own(s))),
        _ => return None,
    };
    Some(Route::Resource(ResourcePath {
        group,
        version,
        plural,
        namespace,
        name,
        subresource,
        watch_prefix,
    }))
}

/// Query parameters, last occurrence wins.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let map = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Query(map)
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.str(key) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid value for {key}: {v:?}"
            ))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.str(key) {
            None | Some("") => Ok(None),
            Some(_) => self.bool(key).map(Some),
        }
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.str(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(|n| u64::try_from(n).ok())
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    }
}

fn parse_rv(value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {value:?}")))
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let Some(route) = parse_path(&path) else {
        shared.log_request(RequestRecord {
            verb: req.method().as_str().to_ascii_lowercase(),
            group: String::new(),
            resource: String::new(),
            namespace: None,
            non_resource_url: Some(path.clone()),
        });
        return Err(ApiError::no_route());
    };
    let method = req.method().clone();
    shared.log_request(request_record(&method, &route, &query, &path));
    let discovery = |v: Option<Value>| -> Result<Response<Body>, ApiError> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        v.map(|v| json_response(200, &v))
            .ok_or_else(ApiError::no_route)
    };
    match route {
        Route::Version => discovery(Some(version_info())),
        Route::Health => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            Ok(r)
        }
        Route::Api => discovery(Some(shared.lock().registry.api_versions())),
        Route::Apis => discovery(Some(shared.lock().registry.api_group_list())),
        Route::Group(g) => discovery(shared.lock().registry.api_group(&g)),
        Route::ResourceList(g, v) => {
            let registry = &shared.lock().registry;
            let found = registry.serves_group_version(&g, &v);
            discovery(found.then(|| registry.api_resource_list(&g, &v)))
        }
        Route::Resource(p) => resource(shared, req, p, query).await,
    }
}

/// The request as an RBAC rule names it (kube-apiserver's request-info rules, for the verbs
/// this server serves).
fn request_record(method: &Method, route: &Route, query: &Query, path: &str) -> RequestRecord {
    let verb = |name: bool, watching: bool| match *method {
        Method::GET if watching => "watch",
        Method::GET if name => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    };
    match route {
        Route::Resource(p) => {
            let watching = p.watch_prefix || query.bool("watch").unwrap_or(false);
            RequestRecord {
                verb: verb(p.name.is_some(), watching).to_string(),
                group: p.group.clone(),
                resource: match &p.subresource {
                    Some(sub) => format!("{}/{sub}", p.plural),
                    None => p.plural.clone(),
                },
                namespace: p.namespace.clone(),
                non_resource_url: None,
            }
        }
        _ => RequestRecord {
            verb: method.as_str().to_ascii_lowercase(),
            group: String::new(),
            resource: String::new(),
            namespace: None,
            non_resource_url: Some(path.to_string()),
        },
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-switchyard",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<(String, Value), ApiError> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let limited = Limited::new(req.into_body(), shared.config.max_body_bytes);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ApiError::too_large()),
        Err(e) => return Err(ApiError::bad_request(format!("reading request body: {e}"))),
    };
    let value = if content_type.ends_with("yaml") {
        serde_yaml::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
    };
    Ok((content_type, value))
}

async fn resource(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    p: ResourcePath,
    query: Query,
) -> Result<Response<Body>, ApiError> {
    let Some(t) = shared
        .lock()
        .registry
        .get(&p.group, &p.version, &p.plural)
        .cloned()
    else {
        return Err(ApiError::no_route());
    };
    if p.namespace.is_some() && !t.namespaced {
        return Err(ApiError::no_route());
    }
    if query.str("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this test server",
        ));
    }
    let ns = p.namespace.as_deref();
    let method = req.method().clone();
    match (&p.name, &p.subresource) {
        (Some(_), Some(sub)) if sub != "status" => return Err(ApiError::no_route()),
        _ => {}
    }
    let watching = p.watch_prefix || query.bool("watch")?;
    match (method, p.name.as_deref()) {
        (Method::GET, None) if watching => watch(shared, t, ns, None, &query).await,
        (Method::GET, Some(name)) if watching => watch(shared, t, ns, Some(name), &query).await,
        (Method::GET, None) => {
            shared.count("list", &t.plural);
            list(&shared, &t, ns, &query)
                .await
                .map(|v| json_response(200, &v))
        }
        (Method::GET, Some(name)) => {
            shared.count("get", &t.plural);
            let ns = namespace_for(&t, ns)?;
            let obj = shared.lock().get(&t, ns, name)?;
            Ok(json_response(200, &obj))
        }
        (Method::POST, None) => {
            shared.count("create", &t.plural);
            if t.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let (_, body) = read_body(&shared, req).await?;
            let obj = shared.lock().create(&t, ns, body)?;
            Ok(json_response(201, &obj))
        }
        (Method::PUT, Some(name)) => {
            shared.count("update", &t.plural);
            let ns = namespace_for(&t, ns)?;
            let (_, body) = read_body(&shared, req).await?;
            let mut store = shared.lock();
            let body = if p.subresource.is_some() {
                // PUT .../status replaces only the status.
                let mut current = (*store.get(&t, ns, name)?).clone();
                current["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                if let Some(rv) = body.pointer("/metadata/resourceVersion") {
                    current["metadata"]["resourceVersion"] = rv.clone();
                }
                current
            } else {
                body
            };
            let obj = store.update(
                &t,
                Some(ns).filter(|_| t.namespaced),
                Some(name),
                body,
                true,
            )?;
            Ok(json_response(200, &obj))
        }
        (Method::PATCH, Some(name)) => {
            shared.count("patch", &t.plural);
            let ns = namespace_for(&t, ns)?;
            let (content_type, patch) = read_body(&shared, req).await?;
            let mut store = shared.lock();
            let path_ns = Some(ns).filter(|_| t.namespaced);
            match content_type.as_str() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let mut current = (*store.get(&t, ns, name)?).clone();
                    let patch = if p.subresource.is_some() {
                        json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)})
                    } else {
                        patch
                    };
                    let expected_rv = patch.pointer("/metadata/resourceVersion").is_some();
                    merge_patch(&mut current, &patch);
                    let obj = store.update(&t, path_ns, Some(name), current, expected_rv)?;
                    Ok(json_response(200, &obj))
                }
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    // Server-side apply without field ownership: create, or merge into what exists.
                    match store.get(&t, ns, name) {
                        Ok(current) => {
                            let mut current = (*current).clone();
                            merge_patch(&mut current, &patch);
                            let obj = store.update(&t, path_ns, Some(name), current, false)?;
                            Ok(json_response(200, &obj))
                        }
                        Err(_) => {
                            let mut body = patch;
                            if let Some(meta) =
                                body.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                meta.insert("name".into(), Value::String(name.to_string()));
                            }
                            let obj = store.create(&t, path_ns, body)?;
                            Ok(json_response(201, &obj))
                        }
                    }
                }
                other => Err(ApiError::unsupported_media_type(other)),
            }
        }
        (Method::DELETE, Some(name)) => {
            shared.count("delete", &t.plural);
            let ns = namespace_for(&t, ns)?;
            let obj = shared.lock().delete(&t, ns, name)?;
            Ok(json_response(200, &obj))
        }
        (Method::DELETE, None) => {
            shared.count("deletecollection", &t.plural);
            let labels = LabelSelector::parse(query.str("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(
                query.str("fieldSelector").unwrap_or(""),
                &t.supported_fields(),
            )?;
            let mut store = shared.lock();
            let (_, victims) = store.snapshot(&t, ns, &labels, &fields);
            let mut items = Vec::new();
            for v in victims {
                let key_ns = v
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let key_name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let Ok(gone) = store.delete(&t, key_ns, key_name) {
                    items.push(gone);
                }
            }
            let list = json!({
                "kind": format!("{}List", t.kind),
                "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": store.resource_version().to_string()},
                "items": items,
            });
            Ok(json_response(200, &list))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn namespace_for<'a>(t: &ResourceType, ns: Option<&'a str>) -> Result<&'a str, ApiError> {
    match (t.namespaced, ns) {
        (true, Some(ns)) => Ok(ns),
        (true, None) => Err(ApiError::no_route()),
        (false, _) => Ok(""),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Waits until the store has reached `rv`, or answers 504 as the real server does.
async fn wait_for(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let mut wake = {
        let store = shared.lock();
        if store.resource_version() >= rv {
            return Ok(());
        }
        store.subscribe()
    };
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    loop {
        {
            let store = shared.lock();
            if store.resource_version() >= rv {
                return Ok(());
            }
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => continue,
            _ => {
                let current = shared.lock().resource_version();
                return Err(ApiError::too_large_resource_version(rv, current));
            }
        }
    }
}

const CONTINUE_EXPIRED: &str =
    "The provided continue parameter is too old to display a consistent \
list result. You can start a new list without the continue parameter, or use the continue token in \
this response to retrieve the remainder of the results. Continuing with the provided token results \
in an inconsistent list - objects that were created, modified, or deleted between the time the \
first chunk was returned and now may show up in the list.";

async fn list(
    shared: &Shared,
    t: &ResourceType,
    ns: Option<&str>,
    query: &Query,
) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(query.str("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(
        query.str("fieldSelector").unwrap_or(""),
        &t.supported_fields(),
    )?;
    let limit = query
        .u64("limit")?
        .filter(|l| *l > 0)
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let rv = query.str("resourceVersion").unwrap_or("");
    let rvm = query.str("resourceVersionMatch").unwrap_or("");
    if !matches!(rvm, "" | "Exact" | "NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            format!("resourceVersionMatch: Unsupported value: {rvm:?}: supported values: \"Exact\", \"NotOlderThan\""),
        ));
    }
    let page = if let Some(token) = query.str("continue").filter(|c| !c.is_empty()) {
        if !rv.is_empty() && rv != "0" {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if !rvm.is_empty() {
            return Err(ApiError::invalid(
                "ListOptions",
                "",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        let token = ContinueToken::decode(token)?;
        let store = shared.lock();
        match store.list(t, ns, &labels, &fields, token.rv, Some(&token.after), limit) {
            Err(mut e) if e.code == 410 => {
                e.message = CONTINUE_EXPIRED.to_string();
                e.continue_token = Some(
                    ContinueToken {
                        rv: store.resource_version(),
                        after: token.after.clone(),
                    }
                    .encode(),
                );
                return Err(e);
            }
            other => other?,
        }
    } else {
        let at = match (rv, rvm) {
            ("", "") => u64::MAX,
            ("", _) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ))
            }
            ("0", "Exact") => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ))
            }
            ("0", _) => u64::MAX,
            (n, m) => {
                let n = parse_rv(n)?;
                wait_for(shared, n).await?;
                let exact = m == "Exact" || (m.is_empty() && limit.is_some());
                if exact {
                    n
                } else {
                    u64::MAX
                }
            }
        };
        let store = shared.lock();
        match store.list(t, ns, &labels, &fields, at, None, limit) {
            Err(mut e) if e.code == 410 => {
                e.message = format!(
                    "The resourceVersion for the provided list is too old. ({})",
                    e.message
                );
                return Err(e);
            }
            other => other?,
        }
    };
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = Value::String(token.clone());
        if labels.is_empty() && fields.is_empty() {
            metadata["remainingItemCount"] = json!(page.remaining);
        }
    }
    Ok(json!({
        "kind": format!("{}List", t.kind),
        "apiVersion": t.api_version(),
        "metadata": metadata,
        "items": page.items,
    }))
}

async fn watch(
    shared: Arc<Shared>,
    t: ResourceType,
    ns: Option<&str>,
    name: Option<&str>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    shared.count("watch", &t.plural);
    let labels = LabelSelector::parse(query.str("labelSelector").unwrap_or(""))?;
    let mut fields = FieldSelector::parse(
        query.str("fieldSelector").unwrap_or(""),
        &t.supported_fields(),
    )?;
    if let Some(name) = name {
        fields = fields.and(FieldSelector::with_name(name));
    }
    let rv = query.str("resourceVersion").unwrap_or("");
    let rvm = query.str("resourceVersionMatch").unwrap_or("");
    let bookmarks = query.bool("allowWatchBookmarks")?;
    let send_initial = query.opt_bool("sendInitialEvents")?;
    if send_initial.is_some() {
        if rvm != "NotOlderThan" {
            return Err(ApiError::invalid(
                "ListOptions",
                "",
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if send_initial == Some(true) && !bookmarks {
            return Err(ApiError::invalid(
                "ListOptions",
                "",
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
    } else if !rvm.is_empty() {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let from = match (rv, send_initial) {
        (_, Some(true)) => {
            if !rv.is_empty() && rv != "0" {
                wait_for(&shared, parse_rv(rv)?).await?;
            }
            None
        }
        ("" | "0", Some(false)) => Some(shared.lock().resource_version()),
        ("" | "0", None) => None,
        (n, _) => {
            let n = parse_rv(n)?;
            wait_for(&shared, n).await?;
            Some(n)
        }
    };
    let timeout = match query.u64("timeoutSeconds")? {
        // Capped at a year so that a silly value cannot overflow the clock.
        Some(s) if s > 0 => Duration::from_secs(s.min(365 * 24 * 3600)),
        _ => shared.config.default_watch_timeout,
    };
    let req = WatchRequest {
        resource: t.clone(),
        namespace: ns.map(str::to_string),
        labels,
        fields,
        from,
        initial_events_end: send_initial == Some(true),
        bookmarks,
        timeout,
    };
    let stream = WatchStream::open(shared, req);
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), s))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let r = |p: &str| match parse_path(p) {
            Some(Route::Resource(r)) => Some((
                r.group,
                r.version,
                r.plural,
                r.namespace,
                r.name,
                r.subresource,
                r.watch_prefix,
            )),
            _ => None,
        };
        assert_eq!(
            r("/api/v1/namespaces/ns/services/x"),
            Some((
                "".into(),
                "v1".into(),
                "services".into(),
                Some("ns".into()),
                Some("x".into()),
                None,
                false
            ))
        );
        assert_eq!(
            r("/api/v1/namespaces/ns"),
            Some((
                "".into(),
                "v1".into(),
                "namespaces".into(),
                None,
                Some("ns".into()),
                None,
                false
            ))
        );
        assert_eq!(
            r("/api/v1/namespaces/ns/status"),
            Some((
                "".into(),
                "v1".into(),
                "namespaces".into(),
                None,
                Some("ns".into()),
                Some("status".into()),
                false
            ))
        );
        assert_eq!(
            r("/apis/discovery.k8s.io/v1/watch/namespaces/a/endpointslices"),
            Some((
                "discovery.k8s.io".into(),
                "v1".into(),
                "endpointslices".into(),
                Some("a".into()),
                None,
                None,
                true
            ))
        );
        assert!(r("/api/v1/namespaces/ns/services/x/status/extra").is_none());
        assert!(matches!(parse_path("/version"), Some(Route::Version)));
        assert!(matches!(
            parse_path("/apis/g/v1"),
            Some(Route::ResourceList(_, _))
        ));
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}

//! The headers every answer of the HTTP app carries, added in one pass by one
//! tower layer ([`HeadersLayer`]) around every route and fallback:
//!
//! - security: `X-Content-Type-Options: nosniff` on every answer of a route;
//!   on HTML ones also the page policy ([`PAGE_CSP`]) and `X-Frame-Options:
//!   DENY` for browsers older than `frame-ancestors`;
//! - CORS (API.md "Additions of 2026-12"; players and pages usually live on
//!   another origin than the API): `http.cors_origins` (`*`, or a list whose
//!   members are echoed), `Vary` naming `Origin` and the preflight headers, the
//!   answer headers a page must be able to read (`ETag` for revalidation,
//!   `Retry-After` after 429/503, `Location` of a 301 to a segment's current
//!   version); no credentials (the API uses no cookies);
//! - preflights: every `OPTIONS` is answered here, `204 No Content` with the
//!   allowed methods and request headers and how long a browser may keep the
//!   answer, and never reaches a route.
//!
//! It answers exactly as the stack it replaced did (tower-http's `CorsLayer`
//! between an `axum::middleware::map_response` for the security headers and an
//! `axum::middleware::from_fn` turning the preflight's 200 into 204; a test
//! below compares the two answer by answer), without their cost on every
//! request: each of those layers cloned its service and boxed a future per
//! request, and the CORS layer also cloned its configuration (two vectors) and
//! built a header map and a `Vary` value. Here every value is a constant
//! (`HeaderValue::from_static`, so cloning it copies a pointer), the layer's
//! service clones one `Option<Arc>`, and the future is the route's own.

use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The Content-Security-Policy of every page: its script, style and
/// connections (fetch and the WebSocket) from this origin only, a session's
/// `video_url` from anywhere (media only), nothing else loaded, and no framing
/// by any site (`frame-ancestors 'none'`).
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; media-src 'self' https: http:; base-uri 'none'; \
     form-action 'self'; \
     frame-ancestors 'none'";

/// How long a browser may reuse a preflight's answer, seconds (Chromium caps
/// it at 2 h).
pub const PREFLIGHT_MAX_AGE_SECS: &str = "7200";
/// The methods the API takes (`Access-Control-Allow-Methods`).
pub const ALLOW_METHODS: &str = "GET,HEAD,POST,PUT,PATCH,DELETE";
/// The request headers the API reads (`Access-Control-Allow-Headers`).
pub const ALLOW_HEADERS: &str = "authorization,content-type,if-none-match";
/// The answer headers a page may read (`Access-Control-Expose-Headers`).
pub const EXPOSE_HEADERS: &str = "etag,retry-after,location";
/// What a CORS answer depends on (`Vary`, added beside any `Vary` of the route).
pub const VARY: &str = "origin, access-control-request-method, access-control-request-headers";

/// The layer of [`crate::app::build`]: security headers, CORS and preflights
/// (see the module documentation).
#[derive(Clone)]
pub struct HeadersLayer {
    origins: Origins,
}

/// Which origins may read the answers.
#[derive(Clone)]
enum Origins {
    /// Any: `Access-Control-Allow-Origin: *` on every answer.
    Any,
    /// These, byte for byte: the request's `Origin` is echoed when listed,
    /// else no allow header.
    List(Arc<[HeaderValue]>),
}

impl HeadersLayer {
    /// The layer for `http.cors_origins`.
    pub fn new(http: &danmaku_core::config::HttpSettings) -> Self {
        let origins = if http.cors_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            // Checked when the configuration loaded; a value that is still not
            // a header value allows nothing rather than failing the start.
            Origins::List(
                http.cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        };
        Self { origins }
    }
}

impl Origins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

impl<S> tower::Layer<S> for HeadersLayer {
    type Service = Headers<S>;

    fn layer(&self, inner: S) -> Headers<S> {
        Headers {
            inner,
            origins: self.origins.clone(),
        }
    }
}

/// The service of [`HeadersLayer`] around one route.
#[derive(Clone)]
pub struct Headers<S> {
    inner: S,
    origins: Origins,
}

impl<S, B, R> tower::Service<Request<B>> for Headers<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Unpin,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = HeadersFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let allow_origin = self.origins.allow(req.headers().get(header::ORIGIN));
        if req.method() == Method::OPTIONS {
            return HeadersFuture::Preflight(Some(preflight(allow_origin)));
        }
        HeadersFuture::Route {
            future: self.inner.call(req),
            allow_origin,
        }
    }
}

/// The answer to an `OPTIONS` request (a preflight, or not: every `OPTIONS`).
fn preflight<R: Default>(allow_origin: Option<HeaderValue>) -> Response<R> {
    let mut resp = Response::new(R::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static(VARY));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
    );
    if let Some(origin) = allow_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    resp
}

/// Adds the security and CORS headers to a route's answer.
fn finish<R>(resp: &mut Response<R>, allow_origin: Option<HeaderValue>) {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    // Beside the route's own `Vary` (`Accept-Encoding`), never in its place.
    h.append(header::VARY, HeaderValue::from_static(VARY));
    // In the order tower-http's layer wrote them (allow, then expose).
    if let Some(origin) = allow_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// The future of [`Headers`]: a preflight's answer, or the route's with the
/// headers added.
pub enum HeadersFuture<F, R> {
    /// The preflight's answer (taken when polled).
    Preflight(Option<Response<R>>),
    /// The route's answer on the way.
    Route {
        /// The route's future (`Unpin`: axum's route futures are).
        future: F,
        /// `Access-Control-Allow-Origin` of the answer, if any.
        allow_origin: Option<HeaderValue>,
    },
}

impl<F, R, E> Future for HeadersFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>> + Unpin,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: `F` is, and a response is never pinned.
        match self.get_mut() {
            HeadersFuture::Preflight(resp) => Poll::Ready(Ok(resp
                .take()
                .expect("a preflight's future is polled until ready once"))),
            HeadersFuture::Route {
                future,
                allow_origin,
            } => {
                let mut resp = std::task::ready!(Pin::new(future).poll(cx))?;
                finish(&mut resp, allow_origin.take());
                Poll::Ready(Ok(resp))
            }
        }
    }
}

impl<F: Unpin, R> Unpin for HeadersFuture<F, R> {}

#[cfg(test)]
mod tests {
    //! The layer against the stack it replaced, built here as it was in
    //! `src/app.rs`: same status, the same headers in the same order, the
    //! same body, for every method, origin and kind of answer.

    use super::*;
    use axum::body::Body;
    use axum::extract::Request as AxumRequest;
    use axum::http::HeaderMap;
    use axum::middleware::Next;
    use axum::response::{Html, IntoResponse};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;
    use tower_http::cors::{AllowOrigin, CorsLayer};

    fn old_cors_layer(http: &danmaku_core::config::HttpSettings) -> CorsLayer {
        let origins = if http.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                http.cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER, header::LOCATION])
            .max_age(std::time::Duration::from_secs(7200))
            .vary([
                header::ORIGIN,
                header::ACCESS_CONTROL_REQUEST_METHOD,
                header::ACCESS_CONTROL_REQUEST_HEADERS,
            ])
    }

    async fn old_preflight_no_content(
        request: AxumRequest,
        next: Next,
    ) -> axum::response::Response {
        let preflight = request.method() == Method::OPTIONS;
        let mut response = next.run(request).await;
        if preflight && response.status() == StatusCode::OK {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        response
    }

    async fn old_security_headers(mut resp: axum::response::Response) -> axum::response::Response {
        let h = resp.headers_mut();
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        let html = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        if html {
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        resp
    }

    /// Answers of every kind the app gives: JSON with its own `Vary` and
    /// `ETag`, HTML, a 429 with `Retry-After`, a redirect, a 404 fallback and a
    /// 405.
    fn routes() -> Router {
        Router::new()
            .route(
                "/json",
                get(|| async {
                    (
                        [
                            (header::VARY, "Accept-Encoding"),
                            (header::ETAG, "\"abc\""),
                            (header::CONTENT_TYPE, "application/json"),
                        ],
                        "{\"a\":1}",
                    )
                })
                .post(|| async { StatusCode::ACCEPTED }),
            )
            .route("/html", get(|| async { Html("<p>hi</p>") }))
            .route(
                "/limited",
                get(|| async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        axum::Json(serde_json::json!({"error": {"code": "rate_limited"}})),
                    )
                }),
            )
            .route(
                "/moved",
                get(|| async {
                    (
                        StatusCode::MOVED_PERMANENTLY,
                        [(header::LOCATION, "/json?v=2")],
                    )
                        .into_response()
                }),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") })
            .method_not_allowed_fallback(|| async {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "this path does not take that method",
                )
            })
    }

    fn old_app(http: &danmaku_core::config::HttpSettings) -> Router {
        routes()
            .layer(axum::middleware::map_response(old_security_headers))
            .layer(old_cors_layer(http))
            .layer(axum::middleware::from_fn(old_preflight_no_content))
    }

    fn new_app(http: &danmaku_core::config::HttpSettings) -> Router {
        routes().layer(HeadersLayer::new(http))
    }

    async fn answer(
        app: Router,
        req: Request<Body>,
    ) -> (StatusCode, Vec<(String, Vec<u8>)>, Vec<u8>) {
        let resp = app.oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        (status, headers, body)
    }

    fn request(method: &Method, path: &str, headers: &HeaderMap) -> Request<Body> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        *req.headers_mut() = headers.clone();
        req
    }

    #[tokio::test]
    async fn answers_exactly_as_the_stack_it_replaced() {
        let configs: [&[&str]; 4] = [
            &["*"],
            &["https://player.example", "http://127.0.0.1:9"],
            &["https://player.example", "*"],
            &["https://player.example", "bad\nvalue"],
        ];
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ];
        let paths = ["/json", "/html", "/limited", "/moved", "/no/such/route"];
        let mut header_sets = vec![HeaderMap::new()];
        for origin in [
            "https://player.example",
            "https://evil.example",
            "HTTPS://PLAYER.EXAMPLE",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            header_sets.push(h.clone());
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            header_sets.push(h);
        }
        let mut compared = 0;
        for origins in configs {
            let http = danmaku_core::config::HttpSettings {
                cors_origins: origins.iter().map(|o| o.to_string()).collect(),
            };
            let (old, new) = (old_app(&http), new_app(&http));
            for method in &methods {
                for path in paths {
                    for headers in &header_sets {
                        let want = answer(old.clone(), request(method, path, headers)).await;
                        let got = answer(new.clone(), request(method, path, headers)).await;
                        assert_eq!(
                            got, want,
                            "{method} {path} {headers:?} with cors_origins {origins:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 4 * 7 * 5 * 7);
    }

    #[test]
    fn the_constants_are_header_values() {
        for v in [
            PAGE_CSP,
            PREFLIGHT_MAX_AGE_SECS,
            ALLOW_METHODS,
            ALLOW_HEADERS,
            EXPOSE_HEADERS,
            VARY,
        ] {
            assert!(HeaderValue::from_str(v).is_ok(), "{v}");
        }
    }
}

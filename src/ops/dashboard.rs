//! `GET /dashboard/` on the operator listener: one self-contained live page (HTML, CSS
//! and JS compiled into the binary) that polls this node's own `/metrics` and
//! `/realstatus/` every second and shows connections, rates, latency and store health
//! (with plots of the last 15 minutes, drawn by the page from what it polled),
//! SimplePush updates and WebPush pushes (acks, nacks, VAPID failures) side by side.

use std::sync::LazyLock;

use warp::http::{HeaderValue, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Where the stylesheet goes in `index.html`.
const STYLE_SLOT: &str = "/* dashboard.css */";
/// Where the script goes in `index.html`.
const SCRIPT_SLOT: &str = "/* dashboard.js */";

/// What the browser may do with the page: run its own inline script and style, fetch
/// from this origin only, be framed by nobody. Nothing ever leaves for another host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page, with its stylesheet and script inlined (assembled once, on first request).
static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("dashboard/index.html")
        .replacen(STYLE_SLOT, include_str!("dashboard/dashboard.css"), 1)
        .replacen(SCRIPT_SLOT, include_str!("dashboard/dashboard.js"), 1)
});

/// The complete dashboard page as served.
pub fn page() -> &'static str {
    &PAGE
}

/// `GET /dashboard` and `GET /dashboard/`: the page.
pub fn route() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::path::full())
        .and_then(|path: warp::path::FullPath| async move {
            match path.as_str() {
                "/dashboard" | "/dashboard/" => Ok(response()),
                _ => Err(warp::reject::not_found()),
            }
        })
}

fn response() -> Response {
    let mut response = Response::new(page().into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_inlines_its_style_and_script() {
        let page = page();
        assert!(!page.contains(STYLE_SLOT) && !page.contains(SCRIPT_SLOT));
        assert!(page.contains(include_str!("dashboard/dashboard.css")));
        assert!(page.contains(include_str!("dashboard/dashboard.js")));
        assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);
    }
}

//! The demo's HTTP routes: the page of a document and the script it loads.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::assets::{DOC_PAGE, PHOENIX_JS};

/// `GET /doc/{id}`: the page of document `id` (it joins topic `doc:<id>`
/// as the user of its `?user=` query and lists who else is there), naming
/// `replica` as the replica that served it; `GET /phoenix.js`: the
/// vendored Phoenix client.
pub fn page_router(replica: &str) -> Router {
    let page = DOC_PAGE.replace("{{replica}}", &escape(replica));
    Router::new()
        .route("/doc/{id}", get(move || async move { Html(page) }))
        .route("/phoenix.js", get(phoenix_js))
}

async fn phoenix_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PHOENIX_JS,
    )
}

/// `text` as HTML text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_are_escaped_in_the_page() {
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}

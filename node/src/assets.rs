//! Files the node serves as they are, embedded in the binary.

/// `phoenix.js` from the npm package `phoenix` 1.8.16, unmodified (MIT
/// licence; see `node/assets/phoenix-1.8.16/`). It defines the global
/// `Phoenix` the demo page uses.
pub const PHOENIX_JS: &str = include_str!("../assets/phoenix-1.8.16/phoenix.js");

/// The sha256 of [`PHOENIX_JS`], as published for phoenix.js 1.8.16.
pub const PHOENIX_JS_SHA256: &str =
    "0508ab5efebd201ff09945cdfe94a9691948a3176fea870c8bb4e575d5ec1bfc";

/// The demo page, with `{{replica}}` where the serving replica's name goes.
pub(crate) const DOC_PAGE: &str = include_str!("../assets/doc.html");

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn vendored_phoenix_js_is_the_published_file() {
        let digest = Sha256::digest(PHOENIX_JS.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PHOENIX_JS_SHA256);
        assert_eq!(PHOENIX_JS.len(), 62_696);
    }
}

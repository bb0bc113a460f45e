//! The pieces of `attendance-node` other programs reuse: the demo page
//! served next to the Phoenix Channels endpoint (`--phoenix ADDR`), and
//! the vendored Phoenix client it loads.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]

pub mod assets;
mod page;

pub use page::page_router;

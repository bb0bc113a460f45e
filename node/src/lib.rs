//! The pieces of `attendance-node` other programs reuse: the demo served
//! with `--phoenix ADDR` (a Phoenix Channels endpoint for the unmodified
//! phoenix.js, next to a page listing who views a document), and the
//! vendored Phoenix client that page loads.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rust_2018_idioms)]

pub mod assets;
mod demo;
mod page;

pub use demo::demo_router;
pub use page::page_router;

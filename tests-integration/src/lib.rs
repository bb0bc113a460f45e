//! The integration tests of `attendance` live in `tests/`; this library only
//! runs the examples of the README and of the operations guide as doc tests,
//! so that the heavy dependencies they use (axum) stay out of the crate's own
//! dev-dependencies.

// The README's examples compile and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// So do those of the operations guide.
#[doc = include_str!("../../docs/operations.md")]
#[cfg(doctest)]
pub struct OperationsDoctests;

//! TLS under the TCP mesh, for confidentiality (the `tls` feature).
//!
//! The mesh's own handshake authenticates members with the cluster secret
//! and MACs every frame, but sends presences in the clear. With a
//! [`TlsConfig`] in [`TcpConfig::tls`](super::tcp::TcpConfig::tls), every
//! connection first runs a TLS handshake (rustls, with the `ring` crypto
//! provider), and the mesh's handshake and frames then run inside it,
//! unchanged: the secret is still required, TLS adds encryption and
//! certificate checks.
//!
//! The usual setup is a private certificate authority for the cluster:
//! [`TlsConfig::from_pem`] takes its certificate and one replica's
//! certificate and key, and makes both sides present and check certificates
//! (mutual TLS). For anything else (public roots, certificate pinning,
//! session settings), build the [`rustls`] configurations by hand and use
//! [`TlsConfig::new`].
//!
//! With one cluster secret, any member can claim any replica name in the
//! mesh's handshake. [`TlsConfig::with_replica_names`] ties names to
//! certificates: a peer's certificate must name the replica it claims to
//! be (a DNS name in its `subjectAltName`), so a member can speak only as
//! the replica its certificate names.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
pub use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::TransportError;

/// Why TLS settings are not usable. The underlying rustls or PEM error is
/// the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input holds no item of this kind.
    #[error("invalid TLS settings: no {0} in the PEM input")]
    Missing(&'static str),
    /// A PEM input does not parse.
    #[error("invalid TLS settings: the {what} PEM does not parse")]
    Pem {
        /// Which input: `certificate authority`, `certificate` or `private key`.
        what: &'static str,
        /// What the PEM parser said.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused a certificate, a key, or the settings made of them
    /// (a key that does not match its certificate, say).
    #[error("invalid TLS settings: rustls refused the {what}")]
    Rejected {
        /// What was refused.
        what: &'static str,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The certificate authority cannot check client certificates.
    #[error("invalid TLS settings: the certificate authority cannot verify clients")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The TLS settings of a TCP mesh replica: how it dials (as a client) and
/// how it accepts (as a server).
///
/// ```
/// use attendance::transport::tls::TlsConfig;
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
/// let read = |file: &str| std::fs::read(format!("{dir}/{file}")).unwrap();
/// let tls = TlsConfig::from_pem(
///     &read("cluster-ca.pem"),
///     &read("cluster-node.pem"),
///     &read("cluster-node.key"),
/// )?;
/// # Ok::<(), attendance::transport::TransportError>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    client: TlsConnector,
    server: TlsAcceptor,
    server_name: Option<ServerName<'static>>,
    replica_names: bool,
}

impl TlsConfig {
    /// Dials with `client` and accepts with `server`. The name checked in
    /// a peer's certificate is the peer's IP address, unless
    /// [`TlsConfig::with_server_name`] sets one.
    pub fn new(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Self {
        Self {
            client: TlsConnector::from(client),
            server: TlsAcceptor::from(server),
            server_name: None,
            replica_names: false,
        }
    }

    /// Mutual TLS within one certificate authority: this replica presents
    /// `cert_pem` (its certificate, then any intermediates) with the private
    /// key `key_pem`, and accepts only peers whose certificates chain to
    /// `ca_pem`, both when it dials and when it accepts. Every replica's
    /// certificate must name the addresses peers dial it at (or the name
    /// given to [`TlsConfig::with_server_name`]).
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`] with a [`TlsError`] when a PEM input holds no
    /// usable certificate or key, or the key does not match the certificate.
    pub fn from_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, TransportError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|source| TlsError::Pem {
                what: "certificate authority",
                source,
            })?;
            roots.add(ca).map_err(|source| TlsError::Rejected {
                what: "certificate authority",
                source,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Missing("certificate authority").into());
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate",
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::Missing("certificate").into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
            what: "private key",
            source,
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(TlsError::Verifier)?;
        let rejected = |what| move |source| TlsError::Rejected { what, source };
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(rejected("server settings"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rejected("certificate or key"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rejected("client settings"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(rejected("certificate or key"))?;
        Ok(Self::new(Arc::new(client), Arc::new(server)))
    }

    /// Checks this name, rather than the IP address dialed, in every peer's
    /// certificate (a cluster-wide name such as `attendance.internal`).
    #[must_use]
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    /// Requires every peer's certificate to name the replica the peer
    /// claims to be in the mesh's handshake: a DNS name in its
    /// `subjectAltName` equal to the replica name. Replica names must then
    /// be single lowercase DNS labels (such as `node-1`): no dot (so no
    /// wildcard certificate can cover one), no capitals (DNS names match
    /// case-blind), not an IP address. A peer whose certificate names
    /// another replica, or whose name is not such a label, is refused,
    /// whatever secret it holds.
    #[must_use]
    pub fn with_replica_names(mut self) -> Self {
        self.replica_names = true;
        self
    }

    /// Whether `cert`, the certificate a peer presented, may speak as the
    /// replica named `name`: always, unless replica names are required.
    pub(crate) fn allows(&self, cert: Option<&CertificateDer<'_>>, name: &str) -> bool {
        if !self.replica_names {
            return true;
        }
        let label = !name.is_empty()
            && name.parse::<std::net::IpAddr>().is_err()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let (true, Some(cert), Ok(name)) = (label, cert, ServerName::try_from(name)) else {
            return false;
        };
        ParsedCertificate::try_from(cert)
            .and_then(|parsed| rustls::client::verify_server_name(&parsed, &name))
            .is_ok()
    }

    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.client.connect(name, stream).await
    }

    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.server.accept(stream).await
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .field("replica_names", &self.replica_names)
            .finish_non_exhaustive()
    }
}

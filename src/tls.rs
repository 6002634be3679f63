//! The process's TLS crypto provider, for every HTTP client ticketbuild builds.
//!
//! reqwest is built with `rustls-no-provider` (no aws-lc C build: ring does the cryptography), so a
//! client cannot be built before a provider is installed. Model providers and the remote cache
//! both build reqwest clients; each calls [`install_crypto_provider`] first.

use std::sync::OnceLock;

/// Installs rustls' ring crypto provider as the process default, once.
pub(crate) fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // An error means a provider is already installed (by an embedding program): keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

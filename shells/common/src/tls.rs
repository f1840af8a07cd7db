//! TLS for the `wss://` session: one rustls client configuration (the `ring` provider and the
//! bundled webpki roots, the same pair ureq uses for HTTP), built once per process and shared
//! by every connection attempt of either shell.
//!
//! The configuration names its crypto provider explicitly, so a handshake never depends on
//! a process-wide default. [`install_crypto_provider`] installs `ring` as that default
//! anyway, at start, so that any other rustls user in the process (one that calls
//! `ClientConfig::builder()`) cannot panic for lack of a provider (PROTOCOL.md §5).

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

/// Installs rustls' `ring` provider as the process default. Returns `false` when a default
/// was already installed (then nothing changes), so calling it twice is harmless.
pub fn install_crypto_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

/// The client configuration for `wss://`: `ring`, TLS 1.2 and 1.3, the bundled webpki roots,
/// no client certificate, no ALPN (the upgrade is HTTP/1.1). Built on first use, then
/// shared.
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }))
}

/// The provider the process default is, if one is installed.
pub fn default_provider_installed() -> bool {
    CryptoProvider::get_default().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_config_is_shared_and_trusts_the_bundled_roots() {
        let a = client_config();
        let b = client_config();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.alpn_protocols.is_empty());
        assert!(!webpki_roots::TLS_SERVER_ROOTS.is_empty());
    }

    #[test]
    fn installing_the_provider_twice_is_harmless() {
        install_crypto_provider();
        assert!(!install_crypto_provider());
        assert!(default_provider_installed());
        // A config built through the process default works now too.
        let _ = ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    }
}

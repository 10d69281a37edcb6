//! TLS setup shared by every HTTP client: rustls with the `ring` provider (no C toolchain needed).

/// Installs rustls' process-wide crypto provider; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

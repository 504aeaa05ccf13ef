//! How the client obtains tokens: the credentials, and the caller's own token function.

use super::certificate::CertificateCredential;
use super::error::Error;
use super::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

/// A function that returns an access token and how long it stays valid, or a text that
/// says why it could not. See [`Credentials::Provider`].
pub type TokenProvider = Arc<dyn Fn() -> Result<(Secret, Duration), String> + Send + Sync>;

/// How the client obtains tokens.
#[derive(Clone)]
pub enum Credentials {
    /// OAuth2 client credentials with a client secret.
    ClientSecret {
        /// The tenant (directory) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The client secret.
        secret: Secret,
    },
    /// OAuth2 client credentials with a certificate: each token request carries a client
    /// assertion signed with the certificate's private key.
    Certificate {
        /// The tenant (directory) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The certificate and its private key.
        certificate: CertificateCredential,
    },
    /// A token obtained elsewhere, used as is.
    AccessToken(Secret),
    /// Tokens from a function of the caller's (a managed identity, a vault, another
    /// library): the client caches each token for the lifetime returned, asks for the next
    /// one a fifth of that lifetime early (at most five minutes), and after a 401. Calls
    /// come from whichever thread needs a token, one at a time per client, never while
    /// another is under way.
    Provider(TokenProvider),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", secret)
                .finish(),
            Credentials::Certificate {
                tenant_id,
                client_id,
                certificate,
            } => f
                .debug_struct("Certificate")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("certificate", certificate)
                .finish(),
            Credentials::AccessToken(t) => f.debug_tuple("AccessToken").field(t).finish(),
            Credentials::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl Credentials {
    /// Tokens from `provider`; see [`Credentials::Provider`].
    pub fn provider(
        provider: impl Fn() -> Result<(Secret, Duration), String> + Send + Sync + 'static,
    ) -> Self {
        Credentials::Provider(Arc::new(provider))
    }
}

/// The longest lifetime a token provider may state: the identity platform's tokens live
/// 1 to 24 hours, and a longer one is an expiry instant passed as a lifetime.
const MAX_PROVIDED_LIFETIME: Duration = super::bounds::MAX_TOKEN_LIFETIME;

/// Calls the caller's token function; a panic in it becomes an `Error::Auth` of the call
/// that needed the token instead of unwinding through the client.
pub(super) fn call_provider(provider: &TokenProvider) -> Result<(Secret, Duration), Error> {
    let auth_error = |m: String| Error::Auth(m, Box::default());
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider()))
        .map_err(|_| auth_error("the token provider panicked".into()))?;
    let (token, lifetime) =
        answer.map_err(|why| auth_error(format!("the token provider failed: {why}")))?;
    if token.is_empty() {
        return Err(auth_error(
            "the token provider returned an empty token".into(),
        ));
    }
    if lifetime.is_zero() {
        return Err(auth_error(
            "the token provider returned a token with no lifetime".into(),
        ));
    }
    if lifetime > MAX_PROVIDED_LIFETIME {
        return Err(auth_error(format!(
            "the token provider returned a lifetime of {} s, over 24 hours: it must be the \
             seconds the token stays valid, not the instant it expires (such as \
             azure-identity's expires_on, an epoch time)",
            lifetime.as_secs()
        )));
    }
    Ok((token, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provided_lifetime_over_a_day_is_an_expiry_instant_and_refused() {
        let day = Duration::from_secs(24 * 3600);
        let provider: TokenProvider = Arc::new(move || Ok((Secret::from("t"), day)));
        assert!(call_provider(&provider).is_ok());
        let epoch: TokenProvider =
            Arc::new(|| Ok((Secret::from("t"), Duration::from_secs(1_764_000_000))));
        let e = call_provider(&epoch).unwrap_err().to_string();
        assert!(
            e.contains("over 24 hours") && e.contains("expires_on"),
            "{e}"
        );
    }
}

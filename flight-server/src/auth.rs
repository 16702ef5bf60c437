//! Who is calling: Basic credentials are exchanged for a bearer token at the handshake,
//! and every other call must carry `authorization: Bearer <token>` (or Basic
//! credentials again, for clients that never keep a token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::users::{Role, Users};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

struct Session {
    identity: Identity,
    expires: Instant,
}

pub struct Authenticator {
    users: Users,
    tokens: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

/// An unguessable identifier: 256 random bits, URL-safe base64.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

fn credentials(metadata: &MetadataMap) -> Result<Credentials, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "no credentials: log in with the handshake (user and password) and send \
             'authorization: Bearer <token>'",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(Credentials::Bearer(rest.trim().to_string())),
        "basic" => {
            // Go clients (ADBC) leave out the padding; others send it.
            let lenient = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = lenient
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
            Ok(Credentials::Basic {
                user: user.to_string(),
                password: password.to_string(),
            })
        }
        _ => Err(Status::unauthenticated(format!(
            "unsupported authorization scheme '{scheme}' (use Basic or Bearer)"
        ))),
    }
}

impl Authenticator {
    pub fn new(users: Users, ttl: Duration) -> Arc<Self> {
        Arc::new(Authenticator {
            users,
            tokens: Mutex::new(HashMap::new()),
            ttl,
        })
    }

    pub fn token_ttl(&self) -> Duration {
        self.ttl
    }

    fn token_identity(&self, token: &str) -> Option<Identity> {
        let mut tokens = self.tokens.lock().unwrap();
        let now = Instant::now();
        tokens.retain(|_, s| s.expires > now);
        tokens.get(token).map(|s| s.identity.clone())
    }

    fn issue(&self, identity: Identity) -> String {
        let token = random_id();
        self.tokens.lock().unwrap().insert(
            token.clone(),
            Session {
                identity,
                expires: Instant::now() + self.ttl,
            },
        );
        token
    }

    /// Check a user and password (or a live token given as the password, for clients
    /// that only send user and password). Hashing is slow by design, so it runs off the
    /// async threads.
    async fn basic(self: &Arc<Self>, user: String, password: String) -> Result<Identity, Status> {
        if let Some(identity) = self.token_identity(&password) {
            if identity.user == user || user.is_empty() || user == "token" {
                return Ok(identity);
            }
        }
        let this = Arc::clone(self);
        let role = tokio::task::spawn_blocking(move || {
            let role = this.users.verify(&user, &password);
            role.map(|role| Identity { user, role })
        })
        .await
        .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        role.ok_or_else(|| Status::unauthenticated("wrong user name or password"))
    }

    /// The handshake: Basic credentials (or a live bearer token) in, a bearer token out.
    pub async fn handshake(
        self: &Arc<Self>,
        metadata: &MetadataMap,
    ) -> Result<(Identity, String), Status> {
        match credentials(metadata)? {
            Credentials::Bearer(token) => {
                let identity = self
                    .token_identity(&token)
                    .ok_or_else(|| Status::unauthenticated("unknown or expired token"))?;
                Ok((identity, token))
            }
            Credentials::Basic { user, password } => {
                if let Some(identity) = self.token_identity(&password) {
                    if identity.user == user || user.is_empty() || user == "token" {
                        return Ok((identity, password));
                    }
                }
                let identity = self.basic(user, password).await?;
                let token = self.issue(identity.clone());
                Ok((identity, token))
            }
        }
    }

    /// The caller of any other request.
    pub async fn authenticate(
        self: &Arc<Self>,
        metadata: &MetadataMap,
    ) -> Result<Identity, Status> {
        match credentials(metadata)? {
            Credentials::Bearer(token) => self
                .token_identity(&token)
                .ok_or_else(|| Status::unauthenticated("unknown or expired token: log in again")),
            Credentials::Basic { user, password } => self.basic(user, password).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn with_header(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", MetadataValue::try_from(value).unwrap());
        m
    }

    fn basic(user: &str, password: &str) -> MetadataMap {
        // Unpadded, as Go clients send it.
        let b =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{user}:{password}"));
        with_header(&format!("Basic {b}"))
    }

    #[tokio::test]
    async fn tokens_come_from_passwords_and_expire() {
        let mut users = Users::default();
        users.set("ana", Role::Analyst, "correct horse").unwrap();
        let auth = Authenticator::new(users, Duration::from_millis(300));

        let err = auth
            .handshake(&basic("ana", "wrong one"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(auth.authenticate(&MetadataMap::new()).await.is_err());

        let (who, token) = auth
            .handshake(&basic("ana", "correct horse"))
            .await
            .unwrap();
        assert_eq!(who.role, Role::Analyst);
        let bearer = with_header(&format!("Bearer {token}"));
        assert_eq!(auth.authenticate(&bearer).await.unwrap().user, "ana");
        // The token also works as a password, and on the handshake.
        assert_eq!(
            auth.handshake(&basic("ana", &token)).await.unwrap().1,
            token
        );
        assert_eq!(auth.handshake(&bearer).await.unwrap().1, token);
        // Not as someone else's password, and not a made-up one.
        assert!(auth.authenticate(&basic("bob", &token)).await.is_err());
        assert!(auth
            .authenticate(&with_header("Bearer nope"))
            .await
            .is_err());

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(auth.authenticate(&bearer).await.is_err());
    }
}

/// Authenticates every RPC but the handshake before it reaches the service, and hands
/// the caller to it as a request extension: no RPC, implemented or not, answers an
/// unauthenticated caller with anything but UNAUTHENTICATED.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<Authenticator>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready service goes into the future; a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            if req.uri().path().ends_with("/Handshake") {
                return inner.call(req).await;
            }
            let metadata = MetadataMap::from_headers(req.headers().clone());
            match auth.authenticate(&metadata).await {
                Ok(identity) => {
                    req.extensions_mut().insert(identity);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

//! Bearer tokens: HS256 JWTs carrying the user id, an optional display name, a
//! role and an expiry, signed with the configured secret.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and sends plain comments.
    #[default]
    Viewer,
    /// The site's own backends: gifts, sessions, exempt from send limits.
    Service,
    /// Everything, including `/v1/admin/*`.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// Service or admin.
    pub fn is_privileged(self) -> bool {
        matches!(self, Role::Service | Role::Admin)
    }
}

/// Token claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret>)")
    }
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user` valid for `ttl_secs` from `now_secs`.
    pub fn issue(
        &self,
        user: &str,
        name: Option<&str>,
        role: Role,
        now_secs: i64,
        ttl_secs: i64,
    ) -> String {
        let claims = Claims {
            sub: user.to_string(),
            exp: now_secs + ttl_secs,
            name: name.map(str::to_string),
            role,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation).ok()?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
            return None;
        }
        Some(data.claims)
    }
}

/// The bearer token of a request: `Authorization: Bearer <token>`, else the
/// `?token=` query value (browsers cannot set headers on a WebSocket).
pub fn bearer<'a>(
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    from_header.or(query_token).filter(|t| !t.is_empty())
}

/// Verifies the request's token: `unauthorized` when missing, malformed, expired or
/// badly signed.
pub fn authenticate(
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<Claims, crate::error::ApiError> {
    use crate::error::{ApiError, ErrorCode};
    let token = bearer(headers, query_token)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "a bearer token is required"))?;
    signer.verify(token).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "the token is malformed, expired or badly signed",
        )
    })
}

/// `authenticate`, then require role service or admin (`forbidden` otherwise).
pub fn require_privileged(
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
) -> Result<Claims, crate::error::ApiError> {
    let claims = authenticate(signer, headers, None)?;
    if !claims.role.is_privileged() {
        return Err(crate::error::ApiError::new(
            crate::error::ErrorCode::Forbidden,
            "this needs a service or admin token",
        ));
    }
    Ok(claims)
}

/// Reading needs no token unless `auth.require_token_to_read` is set.
pub fn check_read_access(
    require: bool,
    signer: &TokenSigner,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<(), crate::error::ApiError> {
    if require {
        authenticate(signer, headers, query_token)?;
    }
    Ok(())
}

/// The configured secret, or the one generated once and kept in `<data dir>/secret`.
pub fn load_secret(configured: &str, data_dir: &std::path::Path) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = data_dir.join("secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = data_dir.join("secret.tmp");
    std::fs::write(&tmp, &secret).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        crate::now_ms() / 1000
    }

    #[test]
    fn issue_and_verify() {
        let s = TokenSigner::new(b"secret");
        let t = s.issue("alice", Some("Alice"), Role::Admin, now(), 60);
        let c = s.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role, Role::Admin);
        assert_eq!(c.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn forged_expired_and_garbage_are_rejected() {
        let s = TokenSigner::new(b"secret");
        let other = TokenSigner::new(b"other");
        assert!(s
            .verify(&other.issue("alice", None, Role::Admin, now(), 60))
            .is_none());
        assert!(s
            .verify(&s.issue("alice", None, Role::Viewer, now() - 1000, 60))
            .is_none());
        assert!(s.verify("not.a.token").is_none());
        assert!(s.verify("").is_none());
    }

    #[test]
    fn role_defaults_to_viewer() {
        let s = TokenSigner::new(b"k");
        let header = Header::new(Algorithm::HS256);
        let body = serde_json::json!({"sub": "bob", "exp": now() + 60});
        let t = jsonwebtoken::encode(&header, &body, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(s.verify(&t).unwrap().role, Role::Viewer);
    }
}

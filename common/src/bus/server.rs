//! `MEMORY_NATS_URL` as NATS needs it: the server list, and credentials moved out of the URLs
//! into the CONNECT options (async-nats ignores a URL's user and password), or given apart
//! (`MEMORY_NATS_USER`/`_PASSWORD`, `_TOKEN`, `_CREDS_FILE`).

use super::BusError;
use crate::config::NatsCredentials;

/// `MEMORY_NATS_URL`: one or more comma-separated server URLs, credentials taken out.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) addrs: Vec<async_nats::ServerAddr>,
    credentials: Option<Credentials>,
}

#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://user:password@host`, or `MEMORY_NATS_USER` and `MEMORY_NATS_PASSWORD`.
    UserPassword(String, String),
    /// `nats://token@host`, or `MEMORY_NATS_TOKEN`.
    Token(String),
    /// `MEMORY_NATS_CREDS_FILE`: a JWT and its NKey seed.
    File(std::path::PathBuf),
}

impl Server {
    /// Parses the list. Errors name the position of the bad server, never its text: it may hold
    /// a password.
    pub(super) fn parse(urls: &str, given: Option<&NatsCredentials>) -> Result<Self, BusError> {
        let bad = |server: usize, reason: String| BusError::BadUrl { server, reason };
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let mut addrs = Vec::new();
        let mut credentials = None;
        for (i, url) in urls.split(',').map(str::trim).filter(|u| !u.is_empty()).enumerate() {
            let addr: async_nats::ServerAddr = url.parse().map_err(|e: std::io::Error| bad(i + 1, e.to_string()))?;
            let Some(user) = addr.username() else {
                addrs.push(addr);
                continue;
            };
            credentials.get_or_insert_with(|| match addr.password() {
                Some(password) => Credentials::UserPassword(decode(user), decode(password)),
                None => Credentials::Token(decode(user)),
            });
            // The credentials travel in the CONNECT options, never in the address.
            let host = addr.host();
            let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
            let bare = format!("{}://{host}:{}", addr.scheme(), addr.port());
            addrs.push(bare.parse().map_err(|e: std::io::Error| bad(i + 1, e.to_string()))?);
        }
        if addrs.is_empty() {
            return Err(bad(1, "no server given".into()));
        }
        if let Some(given) = given {
            if credentials.is_some() {
                return Err(BusError::Credentials(
                    "credentials are given both in MEMORY_NATS_URL and apart: give them one way".into(),
                ));
            }
            credentials = Some(match given {
                NatsCredentials::UserPassword { user, password } => {
                    Credentials::UserPassword(user.clone(), password.expose().to_owned())
                }
                NatsCredentials::Token(token) => Credentials::Token(token.expose().to_owned()),
                NatsCredentials::CredsFile(path) => Credentials::File(path.clone()),
            });
        }
        Ok(Self { addrs, credentials })
    }

    pub(super) async fn options(&self) -> Result<async_nats::ConnectOptions, BusError> {
        Ok(match &self.credentials {
            Some(Credentials::UserPassword(user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Some(Credentials::Token(token)) => async_nats::ConnectOptions::with_token(token.clone()),
            // The error names the file and what is wrong, never its content.
            Some(Credentials::File(path)) => {
                async_nats::ConnectOptions::with_credentials_file(path.clone()).await.map_err(|e| {
                    BusError::Credentials(format!("MEMORY_NATS_CREDS_FILE {}: {}", path.display(), e.kind()))
                })?
            }
            None => async_nats::ConnectOptions::new(),
        })
    }

    /// The servers, for messages: no credentials.
    pub(super) fn shown(&self) -> String {
        self.addrs.iter().map(|a| a.as_url_str().trim_end_matches('/').to_owned()).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_give_up_their_credentials_and_never_show_them() {
        let s = Server::parse("nats://svc:p%40ss%2Cw@nats:4222, tls://n2:4223", None).unwrap();
        assert_eq!(s.credentials, Some(Credentials::UserPassword("svc".into(), "p@ss,w".into())));
        assert_eq!(s.shown(), "nats://nats:4222,tls://n2:4223");
        // No scheme: async-nats assumes nats://, and so do we.
        let s = Server::parse("svc:secret@nats:4222", None).unwrap();
        assert_eq!(s.shown(), "nats://nats:4222");
        let s = Server::parse("nats://tok3n@[::1]:4222", None).unwrap();
        assert_eq!((s.shown(), s.credentials), ("nats://[::1]:4222".into(), Some(Credentials::Token("tok3n".into()))));
        // A raw comma in a password splits the list: the error names the position, not the text.
        let err = Server::parse("nats://svc:pa,ss@nats:4222", None).unwrap_err().to_string();
        assert!(!err.contains("pa") && !err.contains("ss@") && err.contains("server 1"), "{err}");
        assert!(Server::parse(" , ", None).is_err());
    }
}

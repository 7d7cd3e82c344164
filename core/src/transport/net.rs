//! Network safety shared by every HTTP-family transport and by manual fetching
//! (docs/design.md §11): HTTPS anywhere, plain HTTP only to loopback; private, link-local
//! and cloud-metadata addresses refused unless allowed; redirects followed by hand
//! so every hop is re-checked and credentials never cross origins.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};

use crate::error::{Error, Result};

/// At most this many redirects per request.
pub const MAX_REDIRECTS: usize = 5;

/// What a request may reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetPolicy {
    /// Plain `http://` beyond loopback.
    pub allow_insecure_http: bool,
    /// Private, link-local and metadata addresses.
    pub allow_private: bool,
}

/// HTTPS anywhere; plain HTTP only to loopback unless allowed; IP-literal hosts
/// must not be private unless allowed (names are checked when they resolve).
pub fn check_url(url: &url::Url, policy: NetPolicy) -> Result<()> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure_http || is_loopback(url) => {}
        "http" => {
            return Err(Error::Security(format!(
                "refusing plain http to {}: use https (plain http is allowed only to loopback, or with allow_insecure_http)",
                url.host_str().unwrap_or("?")
            )));
        }
        other => {
            return Err(Error::InvalidArgument(format!("unsupported URL scheme '{other}' (expected https or http)")));
        }
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(Error::InvalidArgument(format!("URL {} has no host", redact(url)))),
    };
    if !ip_allowed(ip, policy.allow_private) {
        return Err(refused_ip(url.host_str().unwrap_or("?")));
    }
    Ok(())
}

pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// How local an address is, least local first, so "more local than" is `>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OriginClass {
    /// A public address, or a host name (checked again when it resolves, docs/design.md §11).
    Public,
    /// RFC 1918, CGNAT, ULA, link-local (cloud metadata included), unspecified.
    Private,
    /// 127/8, ::1, `localhost` and `*.localhost`.
    Loopback,
}

impl OriginClass {
    pub fn describe(self) -> &'static str {
        match self {
            OriginClass::Public => "a public address",
            OriginClass::Private => "a private address",
            OriginClass::Loopback => "loopback",
        }
    }
}

/// The class of a URL's host. A `tcp://` origin (a manual a `tcp` or `udp` template
/// returned) has an opaque host, so IP literals are read from the host text.
pub fn origin_class(url: &url::Url) -> OriginClass {
    url.host_str().map_or(OriginClass::Public, bare_host_class)
}

/// The class of a bare host (a name, an IPv4 literal, an IPv6 literal with or without
/// brackets), as a `tcp` or `udp` template gives it.
pub fn bare_host_class(host: &str) -> OriginClass {
    let host = host.trim();
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return ip_class(ip);
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") { OriginClass::Loopback } else { OriginClass::Public }
}

fn ip_class(ip: IpAddr) -> OriginClass {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if mapped.is_loopback() {
        OriginClass::Loopback
    } else if ip_allowed(mapped, false) {
        OriginClass::Public
    } else {
        OriginClass::Private
    }
}

fn refused_ip(host: &str) -> Error {
    Error::Security(format!(
        "refusing to connect to {host}: private, link-local or metadata address (allow with calls.allow_private_networks)"
    ))
}

/// Whether a connection to `ip` is allowed. Loopback always is (plain HTTP to it
/// is the one exception docs/design.md §11 makes); unspecified, multicast and broadcast never are.
pub fn ip_allowed(ip: IpAddr, allow_private: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_private),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_allowed(v4, allow_private);
            }
            if v6.is_loopback() {
                return true;
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return false;
            }
            let seg0 = v6.segments()[0];
            let private = (seg0 & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254 metadata)
                || (seg0 & 0xffc0) == 0xfe80 // link-local
                || (seg0 & 0xffc0) == 0xfec0; // site-local (deprecated)
            allow_private || !private
        }
    }
}

fn v4_allowed(ip: Ipv4Addr, allow_private: bool) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return false;
    }
    let o = ip.octets();
    let private = ip.is_private()
        || ip.is_link_local() // 169.254/16, incl. 169.254.169.254 metadata
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 CGNAT (incl. 100.100.100.200 metadata)
        || o[0] == 0;
    allow_private || !private
}

/// The cap on what the tools of a manual fetched from `from` may reach: nothing more
/// local than `from` (none for a loopback origin or a URL that does not parse).
pub fn locality_cap(from: &str) -> Option<OriginClass> {
    url::Url::parse(from).ok().map(|from| origin_class(&from)).filter(|class| *class != OriginClass::Loopback)
}

/// A DNS resolver that drops addresses the policy forbids, so a name cannot
/// smuggle a request to a private address (DNS rebinding included: the check is
/// on the addresses actually connected to).
///
/// With a `cap` (the tools of a manual fetched from a public or private address), an
/// address more local than the cap is dropped too: a name such as `evil.example`
/// that resolves to 127.0.0.1 cannot point such a tool at this host.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
    pub cap: Option<OriginClass>,
}

/// The resolver's refusal, found again in reqwest's error chain.
#[derive(Debug)]
pub struct RefusedAddress {
    pub host: String,
    /// Set when the addresses were refused for being more local than this.
    pub cap: Option<OriginClass>,
}

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cap {
            Some(cap) => write!(
                f,
                "refusing to connect to {}: it resolves only to addresses more local than {}, where the tool's manual was fetched from",
                self.host,
                cap.describe()
            ),
            None => write!(
                f,
                "refusing to connect to {}: it resolves only to private, link-local or metadata addresses (allow with calls.allow_private_networks)",
                self.host
            ),
        }
    }
}

impl std::error::Error for RefusedAddress {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let GuardedResolver { allow_private, cap } = *self;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = GuardedResolver { allow_private, cap }
                .permitted(&host, addrs)
                .map_err(|refused| Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl GuardedResolver {
    /// The addresses `host` resolved to that may be connected to.
    fn permitted(self, host: &str, addrs: Vec<SocketAddr>) -> std::result::Result<Vec<SocketAddr>, RefusedAddress> {
        let GuardedResolver { allow_private, cap } = self;
        let permitted: Vec<SocketAddr> = addrs.iter().copied().filter(|a| ip_allowed(a.ip(), allow_private)).collect();
        let allowed: Vec<SocketAddr> =
            permitted.iter().copied().filter(|a| cap.is_none_or(|c| ip_class(a.ip()) <= c)).collect();
        if allowed.is_empty() && !addrs.is_empty() {
            let cap = if permitted.is_empty() { None } else { cap };
            return Err(RefusedAddress { host: host.to_string(), cap });
        }
        Ok(allowed)
    }

    /// Resolve `host:port` for a transport that connects sockets itself (`websocket`):
    /// the same refusals as the HTTP client's resolver, as `SECURITY` errors.
    pub async fn resolve(self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        // An IP literal in brackets (`[::1]`) as `url::Url::host_str` gives it.
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| Error::Transport(format!("cannot resolve {host}: {e}")))?
            .collect();
        let allowed = self.permitted(host, addrs).map_err(|refused| Error::Security(refused.to_string()))?;
        if allowed.is_empty() {
            return Err(Error::Transport(format!("{host} resolves to no address")));
        }
        Ok(allowed)
    }
}

/// The one pooled client of an engine: keep-alive, HTTP/2 where the server offers
/// it (ALPN), guarded DNS, no automatic redirects (see [`send`]).
/// `cap`: see [`GuardedResolver`].
pub fn build_client(allow_private: bool, cap: Option<OriginClass>) -> std::result::Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(GuardedResolver { allow_private, cap }))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("utp-runtime/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// A URL as it may appear in an error or log: no credentials, no query (API keys
/// travel there), no fragment.
pub fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// A request body that can be sent again (redirects, the OAuth retry).
#[derive(Debug, Clone)]
pub enum Body {
    None,
    Bytes {
        content_type: String,
        data: Bytes,
    },
    /// multipart/form-data: (field name, text value) pairs.
    Multipart(Vec<(String, String)>),
}

/// Everything needed to (re)build one request.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: reqwest::Method,
    pub url: url::Url,
    /// (name, value, sensitive): sensitive headers (credentials) are dropped when a
    /// redirect leaves the origin.
    pub headers: Vec<(HeaderName, HeaderValue, bool)>,
    pub body: Body,
    pub timeout: Option<Duration>,
    /// Follow redirects (re-checked); when false a 3xx is returned as is.
    pub follow_redirects: bool,
    /// When set, a redirect to an address more local than this is refused with
    /// `SECURITY` (a manual fetched from a public host may not bounce us to loopback).
    pub redirect_locality_cap: Option<OriginClass>,
}

impl RequestSpec {
    pub fn new(method: reqwest::Method, url: url::Url) -> RequestSpec {
        RequestSpec {
            method,
            url,
            headers: Vec::new(),
            body: Body::None,
            timeout: None,
            follow_redirects: true,
            redirect_locality_cap: None,
        }
    }

    fn build(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut rb = client.request(self.method.clone(), self.url.clone());
        for (name, value, _) in &self.headers {
            rb = rb.header(name.clone(), value.clone());
        }
        if let Some(t) = self.timeout {
            rb = rb.timeout(t);
        }
        match &self.body {
            Body::None => rb,
            Body::Bytes { content_type, data } => {
                rb.header(reqwest::header::CONTENT_TYPE, content_type).body(data.clone())
            }
            Body::Multipart(parts) => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in parts {
                    form = form.text(k.clone(), v.clone());
                }
                rb.multipart(form)
            }
        }
    }
}

/// Send `spec`, following redirects by hand: each hop re-checked by `policy`,
/// 301/302/303 turn into a body-less GET, sensitive headers are dropped once the
/// request leaves the original origin, and a 307/308 that would carry a body to
/// another origin is refused with `SECURITY`.
pub async fn send(client: &reqwest::Client, policy: NetPolicy, mut spec: RequestSpec) -> Result<reqwest::Response> {
    check_url(&spec.url, policy)?;
    // The first request's origin, taken when a redirect first needs it.
    let mut origin = None;
    for _ in 0..=MAX_REDIRECTS {
        let response = spec.build(client).send().await.map_err(|e| request_error(&spec.method, &spec.url, e))?;
        let status = response.status();
        if !spec.follow_redirects || !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let Some(location) = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()) else {
            return Ok(response);
        };
        let next = spec.url.join(location).map_err(|e| {
            Error::Transport(format!("{} {}: bad redirect location: {e}", spec.method, redact(&spec.url)))
        })?;
        check_url(&next, policy)?;
        if let Some(cap) = spec.redirect_locality_cap
            && origin_class(&next) > cap
        {
            return Err(Error::Security(format!(
                "{} {}: a redirect to {} ({}) from a request that started at {} is refused",
                spec.method,
                redact(&spec.url),
                origin_class(&next).describe(),
                next.host_str().unwrap_or("?"),
                cap.describe()
            )));
        }
        if matches!(status.as_u16(), 301..=303) && spec.method != reqwest::Method::HEAD {
            spec.method = reqwest::Method::GET;
            spec.body = Body::None;
        }
        if next.origin() != *origin.get_or_insert_with(|| spec.url.origin()) {
            // 307/308 keep the method and body: a body (form fields, an OAuth2 client
            // secret, a tool's payload) never goes to an origin the manual did not name.
            if !matches!(spec.body, Body::None) {
                return Err(Error::Security(format!(
                    "{} {}: a {} redirect to another origin ({}) would send the request body there; refused",
                    spec.method,
                    redact(&spec.url),
                    status.as_u16(),
                    next.origin().ascii_serialization()
                )));
            }
            spec.headers.retain(|(_, _, sensitive)| !sensitive);
        }
        spec.url = next;
    }
    Err(Error::Transport(format!("{}: more than {MAX_REDIRECTS} redirects", redact(&spec.url))))
}

/// A reqwest error as our error: timeouts as `TIMEOUT`, refused addresses as
/// `SECURITY`, the rest as `TRANSPORT`; never with the URL's query or credentials.
pub fn request_error(method: &reqwest::Method, url: &url::Url, e: reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<RefusedAddress>() {
            return Error::Security(refused.to_string());
        }
        source = s.source();
    }
    let shown = redact(url);
    if e.is_timeout() {
        return Error::Timeout(format!("{method} {shown}: timed out"));
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let mut detail = e.without_url().to_string();
    for c in causes {
        detail = format!("{detail}: {c}");
    }
    Error::Transport(format!("{method} {shown}: {detail}"))
}

/// A loopback HTTP server answering every request with `answer(its own port)`, a whole
/// response, for the tests; its port.
#[cfg(test)]
pub(crate) fn canned_server(answer: impl Fn(u16) -> String + Send + 'static) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(answer(port).as_bytes());
        }
    });
    port
}

/// A loopback HTTP server answering every request `200 {}`, for the tests; its port.
#[cfg(test)]
pub(crate) fn empty_json_server() -> u16 {
    canned_server(|_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        let ok = |u: &str, p: NetPolicy| check_url(&url::Url::parse(u).unwrap(), p).is_ok();
        let strict = NetPolicy::default();
        assert!(ok("https://example.com/m", strict));
        assert!(ok("http://127.0.0.1:8080/m", strict));
        assert!(ok("http://localhost/m", strict));
        assert!(ok("http://[::1]/m", strict));
        assert!(!ok("http://example.com/m", strict));
        assert!(!ok("ftp://example.com/m", strict));
        assert!(!ok("https://169.254.169.254/latest", strict));
        assert!(!ok("https://10.0.0.1/", strict));
        assert!(!ok("https://[fd00:ec2::254]/", strict));
        assert!(!ok("https://[::ffff:192.168.1.1]/", strict));
        assert!(!ok("https://0.0.0.0/", strict));
        assert!(ok("https://10.0.0.1/", NetPolicy { allow_private: true, ..strict }));
        assert!(ok("http://example.com/", NetPolicy { allow_insecure_http: true, ..strict }));
    }

    #[test]
    fn origin_classes_of_http_and_tcp_urls() {
        let class = |u: &str| origin_class(&url::Url::parse(u).unwrap());
        for scheme in ["http", "tcp"] {
            assert_eq!(class(&format!("{scheme}://127.0.0.1:5/")), OriginClass::Loopback);
            assert_eq!(class(&format!("{scheme}://[::1]:5/")), OriginClass::Loopback);
            assert_eq!(class(&format!("{scheme}://api.localhost:5/")), OriginClass::Loopback);
            assert_eq!(class(&format!("{scheme}://10.0.0.1:5/")), OriginClass::Private);
            assert_eq!(class(&format!("{scheme}://[fe80::1]:5/")), OriginClass::Private);
            assert_eq!(class(&format!("{scheme}://example.com:5/")), OriginClass::Public);
            assert_eq!(class(&format!("{scheme}://8.8.8.8:5/")), OriginClass::Public);
        }
        assert_eq!(bare_host_class("::ffff:127.0.0.1"), OriginClass::Loopback);
        assert_eq!(bare_host_class("LOCALHOST."), OriginClass::Loopback);
    }

    /// A request capped at "public" (as a manual fetched from a public host) may not be
    /// redirected to loopback. The cap is set by hand: a test can only serve loopback.
    #[test]
    fn a_redirect_more_local_than_the_cap_is_refused() {
        let port = canned_server(|port| {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/next\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = build_client(false, None).unwrap();
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/manual")).unwrap();
        let mut spec = RequestSpec::new(reqwest::Method::GET, url.clone());
        spec.redirect_locality_cap = Some(OriginClass::Public);
        let err = rt.block_on(send(&client, NetPolicy::default(), spec)).unwrap_err();
        assert!(matches!(err, Error::Security(_)), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
        // Without the cap (the default) the same redirect is followed.
        let spec = RequestSpec::new(reqwest::Method::GET, url);
        let err = rt.block_on(send(&client, NetPolicy::default(), spec)).unwrap_err();
        assert!(err.to_string().contains("redirects"), "{err}");
    }

    #[test]
    fn a_capped_client_refuses_names_that_resolve_more_locally() {
        let port = empty_json_server();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // `localhost` goes through the resolver as any name would: 127.0.0.1 is more local
        // than a public (or private) origin.
        let url = url::Url::parse(&format!("http://localhost:{port}/")).unwrap();
        for cap in [OriginClass::Public, OriginClass::Private] {
            let client = build_client(true, Some(cap)).unwrap();
            let spec = RequestSpec::new(reqwest::Method::GET, url.clone());
            let err = rt.block_on(send(&client, NetPolicy::default(), spec)).unwrap_err();
            assert!(matches!(err, Error::Security(_)), "{err}");
            assert!(err.to_string().contains("more local than"), "{err}");
        }
        let client = build_client(false, None).unwrap();
        let response = rt.block_on(send(&client, NetPolicy::default(), RequestSpec::new(reqwest::Method::GET, url)));
        assert_eq!(response.unwrap().status(), 200);
    }

    #[test]
    fn redaction_drops_credentials_and_query() {
        let u = url::Url::parse("https://user:pw@x.dev/p?api_key=secret#f").unwrap();
        assert_eq!(redact(&u), "https://x.dev/p");
    }
}

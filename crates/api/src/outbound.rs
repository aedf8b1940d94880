//! Calls to addresses that tenants give us (webhook URLs): the SSRF guard and the signed
//! delivery.
//!
//! A URL is resolved, and every address it resolves to must be public; the delivery then
//! connects to the vetted address (no second lookup an attacker could answer differently),
//! follows no redirects and times out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether an address is on the public internet: not loopback, private, link-local (cloud
/// metadata lives there), shared, documentation, multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x0064 && seg[1] == 0xff9b)) // NAT64 of anything
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
        || o[0] >= 240)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Url(&'static str),
    Unresolvable,
    Address(IpAddr),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Url(why) => write!(f, "{why}"),
            Refusal::Unresolvable => write!(f, "the host does not resolve"),
            Refusal::Address(_) => write!(
                f,
                "the host resolves to a loopback, private, link-local or otherwise non-public address"
            ),
        }
    }
}

/// The checks on the URL itself.
pub fn check_url(raw: &str, allow_http: bool) -> Result<url::Url, Refusal> {
    let url = url::Url::parse(raw).map_err(|_| Refusal::Url("must be an absolute URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ => return Err(Refusal::Url("must be an https URL")),
    }
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Url("must name a host and carry no credentials"));
    }
    if url.fragment().is_some() {
        return Err(Refusal::Url("must not carry a fragment"));
    }
    Ok(url)
}

/// Picks the address to connect to from what the host resolved to; every one must pass.
pub fn vet(addrs: &[IpAddr], allow_loopback: bool) -> Result<IpAddr, Refusal> {
    let first = *addrs.first().ok_or(Refusal::Unresolvable)?;
    for ip in addrs {
        let ok = is_public(*ip) || (allow_loopback && ip.is_loopback());
        if !ok {
            return Err(Refusal::Address(*ip));
        }
    }
    Ok(first)
}

/// Resolves the URL's host (the system resolver) and vets the answer.
pub async fn resolve_and_vet(url: &url::Url, allow_loopback: bool) -> Result<SocketAddr, Refusal> {
    let host = url.host_str().ok_or(Refusal::Unresolvable)?;
    let port = url.port_or_known_default().ok_or(Refusal::Unresolvable)?;
    let addrs: Vec<IpAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refusal::Unresolvable)?
            .map(|a| a.ip())
            .collect(),
    };
    Ok(SocketAddr::new(vet(&addrs, allow_loopback)?, port))
}

/// `webhook-signature` per Standard Webhooks: `v1,` + base64 HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` with the secret's bytes (`whsec_` + base64).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A DNS resolver for back-channel clients (OpenID providers) that answers only with
/// addresses [`vet`] allows, so a configured host cannot lead the service to an internal
/// address, whatever the discovery document says.
pub struct PublicOnly {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            vet(&ips, allow_loopback).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> {
                format!("{host}: {e}").into()
            })?;
            let out: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(out)
        })
    }
}

/// For URLs whose host is an IP literal (the resolver is not asked for those).
pub fn vet_literal(url: &url::Url, allow_loopback: bool) -> Result<(), Refusal> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => vet(&[IpAddr::V4(ip)], allow_loopback).map(|_| ()),
        Some(url::Host::Ipv6(ip)) => vet(&[IpAddr::V6(ip)], allow_loopback).map(|_| ()),
        Some(url::Host::Domain(_)) => Ok(()),
        None => Err(Refusal::Url("must name a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard is tested with a fake resolver's answers: no private address is contacted.
    #[test]
    fn private_and_metadata_addresses_are_refused() {
        let fake = |s: &str| -> IpAddr { s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) };
        for bad in [
            "10.0.0.5",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                matches!(vet(&[fake(bad)], false), Err(Refusal::Address(_))),
                "{bad} must be refused"
            );
        }
        // A host answering with one public and one private address is refused as a whole.
        assert!(vet(&[fake("93.184.216.34"), fake("10.0.0.1")], false).is_err());
        assert_eq!(
            vet(&[fake("93.184.216.34")], false),
            Ok(fake("93.184.216.34"))
        );
        assert_eq!(
            vet(&[fake("2606:2800:220:1:248:1893:25c8:1946")], false),
            Ok(fake("2606:2800:220:1:248:1893:25c8:1946"))
        );
        // Tests may allow loopback, and only loopback.
        assert_eq!(vet(&[fake("127.0.0.1")], true), Ok(fake("127.0.0.1")));
        assert!(vet(&[fake("192.168.0.10")], true).is_err());
        assert!(vet(&[fake("169.254.169.254")], true).is_err());
        assert_eq!(vet(&[], false), Err(Refusal::Unresolvable));
    }

    #[test]
    fn urls_must_be_https_without_credentials() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_url("http://hooks.example.com/x", false).is_err());
        assert!(check_url("http://hooks.example.com/x", true).is_ok());
        assert!(check_url("https://user:pw@hooks.example.com/", false).is_err());
        assert!(check_url("ftp://hooks.example.com/", true).is_err());
        assert!(check_url("hooks.example.com", true).is_err());
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() -> anyhow::Result<()> {
        // The example of the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )?;
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        Ok(())
    }
}

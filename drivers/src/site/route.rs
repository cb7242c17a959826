//! The router: turns the site config's route for a name into ordered, built drivers.
//!
//! Rules: `specs/site-config.md` (SITE-2, SITE-4, SITE-5).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Reference;

use crate::site::config::{CredentialsConfig, DriverConfig, SiteConfig, SourceConfig};
use crate::sources::mirror::MirrorDriver;
use crate::sources::oci_layout::OciLayoutDriver;
use crate::sources::peer::{PeerConfig, PeerDriver};
use crate::sources::registry::{Credentials, RegistryConfig, RegistryDriver};
use crate::sources::s3::{S3Config, S3Driver};
use crate::{Driver, Error, ErrorKind, Result};

/// The sources for `reference`: its route's, or its host's registry when no route matches.
pub fn sources_for(config: &SiteConfig, reference: &Reference) -> Result<Sources> {
    let Some(route) = config.route_for(&reference.name()) else {
        return Ok(Sources::single(Arc::new(RegistryDriver::for_host(
            reference.registry(),
        )?)));
    };
    let build_all = |names: &[String]| -> Result<Vec<Arc<dyn Driver>>> {
        names
            .iter()
            .map(|n| {
                let source = config.sources.get(n).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Invalid,
                        "",
                        format!("route {:?} names unknown source {n:?}", route.prefix),
                    )
                })?;
                build_source(source)
            })
            .collect()
    };
    let content = build_all(&route.sources)?;
    // A source in both lists is one driver, so its token cache and health are shared.
    // Peers never answer tags of unsigned names (specs/peer.md, PEER-6).
    let is_peer = |n: &String| {
        matches!(
            config.sources.get(n).map(|s| &s.driver),
            Some(DriverConfig::Peer { .. })
        )
    };
    let resolve = route
        .resolve
        .iter()
        .filter(|n| !is_peer(n))
        .map(|n| match route.sources.iter().position(|s| s == n) {
            Some(i) => Ok(content[i].clone()),
            None => build_all(std::slice::from_ref(n)).map(|mut v| v.remove(0)),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Sources { content, resolve })
}

/// Builds the driver of one configured source.
pub fn build_source(source: &SourceConfig) -> Result<Arc<dyn Driver>> {
    let name = source.name.as_str();
    Ok(match &source.driver {
        DriverConfig::Registry {
            url,
            insecure,
            repository,
            credentials,
        } => Arc::new(RegistryDriver::new(RegistryConfig {
            source_name: name.to_string(),
            base_url: url.clone(),
            insecure: *insecure,
            credentials: registry_credentials(name, credentials)?,
            repository: repository.clone(),
        })?),
        DriverConfig::Mirror {
            endpoints,
            insecure,
            repository,
            cooldown_secs,
            credentials,
        } => {
            let credentials = registry_credentials(name, credentials)?;
            let endpoints = endpoints
                .iter()
                .map(|url| {
                    RegistryDriver::new(RegistryConfig {
                        source_name: format!("{name} ({})", url.as_str().trim_end_matches('/')),
                        base_url: url.clone(),
                        insecure: *insecure,
                        credentials: credentials.clone(),
                        repository: repository.clone(),
                    })
                    .map(|d| Arc::new(d) as Arc<dyn Driver>)
                })
                .collect::<Result<Vec<_>>>()?;
            Arc::new(MirrorDriver::new(
                name,
                endpoints,
                Duration::from_secs(*cooldown_secs),
            ))
        }
        DriverConfig::S3 {
            bucket,
            endpoint,
            region,
            prefix,
            layout,
        } => {
            let mut config = S3Config::new(name, bucket.clone());
            config.allow_http = endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"));
            config.endpoint = endpoint.clone();
            config.region = region.clone();
            config.prefix = prefix.clone();
            config.layout = *layout;
            Arc::new(S3Driver::new(config)?)
        }
        DriverConfig::OciLayout { path } => Arc::new(OciLayoutDriver::new(name, path.clone())),
        DriverConfig::Peer { peers } => {
            Arc::new(PeerDriver::new(PeerConfig::new(name, peers.clone()))?)
        }
    })
}

fn registry_credentials(source: &str, config: &CredentialsConfig) -> Result<Credentials> {
    Ok(match config {
        CredentialsConfig::Anonymous => Credentials::Anonymous,
        CredentialsConfig::DockerConfig => Credentials::DockerConfig,
        CredentialsConfig::PasswordFile {
            username,
            password_file,
        } => {
            let text = std::fs::read_to_string(password_file).map_err(|e| {
                Error::new(
                    ErrorKind::Invalid,
                    source,
                    format!("password file {}: {e}", password_file.display()),
                )
            })?;
            Credentials::Basic {
                username: username.clone(),
                password: text.lines().next().unwrap_or_default().to_string(),
            }
        }
    })
}

/// The sources a pull may use, in order of preference.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Sources asked for content by digest, in order.
    pub content: Vec<Arc<dyn Driver>>,
    /// Sources allowed to answer tag → digest, in order.
    pub resolve: Vec<Arc<dyn Driver>>,
}

impl Sources {
    /// One driver for everything (no site config).
    pub fn single(driver: Arc<dyn Driver>) -> Self {
        Sources {
            content: vec![driver.clone()],
            resolve: vec![driver],
        }
    }
}

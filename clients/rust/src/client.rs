//! Making a client, and the builders of its producers, consumers and readers.

use std::path::PathBuf;
use std::time::Duration;

use crate::conn::{Authentication, Pool, Settings, Target};
use crate::consumer::ConsumerBuilder;
use crate::error::{Error, Result};
use crate::producer::ProducerBuilder;
use crate::reader::ReaderBuilder;
use crate::service::{Client, ClientOptions};

pub struct ClientBuilder {
    url: String,
    opts: ClientOptions,
}

impl ClientBuilder {
    pub fn authentication(mut self, a: Authentication) -> Self {
        self.opts.auth = Some(a);
        self
    }

    /// Authenticates with a JWT.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.authentication(Authentication::token(token))
    }

    pub fn tls_trust_certs(mut self, pem: impl Into<PathBuf>) -> Self {
        self.opts.tls_trust_certs = Some(pem.into());
        self
    }

    pub fn operation_timeout(mut self, d: Duration) -> Self {
        self.opts.operation_timeout = d;
        self
    }

    pub fn connection_timeout(mut self, d: Duration) -> Self {
        self.opts.connection_timeout = d;
        self
    }

    pub fn keepalive(mut self, d: Duration) -> Self {
        self.opts.keepalive = d;
        self
    }

    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.opts.max_backoff = d;
        self
    }

    pub fn options(mut self, opts: ClientOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Checks the URL and options; connections are opened when first needed.
    pub fn build(self) -> Result<Client> {
        let service = Target::parse_service(&self.url)?;
        let tls = match &self.opts.tls_trust_certs {
            Some(p) => Some(crate::conn::tls_config(p)?),
            None => None,
        };
        if self.opts.keepalive.is_zero() || self.opts.operation_timeout.is_zero() {
            return Err(Error::Invalid(
                "keepalive and operation timeout must be positive".into(),
            ));
        }
        let settings = Settings {
            auth: self.opts.auth.clone(),
            tls,
            connect_timeout: self.opts.connection_timeout,
            operation_timeout: self.opts.operation_timeout,
            keepalive: self.opts.keepalive,
        };
        Ok(Client::start(Pool::new(settings), service, self.opts))
    }
}

impl Client {
    /// `pulsar://host:6650` (several hosts comma-separated) or `pulsar+ssl://host:6651`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            opts: ClientOptions::default(),
        }
    }

    pub fn new(url: impl Into<String>) -> Result<Client> {
        Client::builder(url).build()
    }

    pub fn producer(&self, topic: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder::new(self.clone(), topic.into())
    }

    pub fn consumer(&self) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone())
    }

    pub fn reader(&self, topic: impl Into<String>) -> ReaderBuilder {
        ReaderBuilder::new(self.clone(), topic.into())
    }
}

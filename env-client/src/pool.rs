//! [`Pool`]: many concurrent episodes over one or more OpenEnv servers.
//!
//! Each episode gets its own fresh connection ([`EnvClient`]), as OpenEnv sessions are one per
//! connection. The pool caps the sessions it holds open on each server; a new session goes to
//! the server with the most free slots (ties rotate), and waits when every server is full.
//!
//! Architecture invariant: a [`PooledClient`] holds its server's slot for exactly its own
//! lifetime, so no exit path (error, panic, drop without `close`) can leak a slot, and the pool
//! never has more than `max_sessions_per_server` connections open to one server.

use std::cmp::Reverse;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{ClientConfig, EnvClient, ws_url};
use crate::error::ClientError;

/// Runs episodes across servers with a per-server session cap. Cheap to clone (shared state).
///
/// ```no_run
/// # async fn demo() -> Result<(), env_client::ClientError> {
/// use env_client::{Pool, protocol::JsonMap};
/// use serde_json::json;
///
/// // Up to 32 sessions on each of two servers.
/// let pool = Pool::new(["http://env-a:8000", "http://env-b:8000"], 32)?;
///
/// // 256 episodes, at most 64 at a time, each on its own connection.
/// let rewards = pool
///     .run(256, async |client, episode| {
///         let mut kwargs = JsonMap::new();
///         kwargs.insert("seed".into(), json!(episode));
///         client.reset(kwargs).await?;
///         let mut action = JsonMap::new();
///         action.insert("message".into(), json!("hello"));
///         let step = client.step(action).await?;
///         Ok(step.reward.map(|r| r.as_f64()))
///     })
///     .await;
/// assert_eq!(rewards.len(), 256);
///
/// // Or hold a session yourself; its slot is freed when it is closed or dropped.
/// let client = pool.acquire().await?;
/// client.reset(JsonMap::new()).await?;
/// client.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    servers: Vec<Server>,
    /// One permit per slot of every server. Taken before a server slot and released after
    /// it, so a holder of a global permit always finds a free server slot.
    total: Arc<Semaphore>,
    max_per_server: usize,
    /// Rotates the starting server, so ties between servers alternate.
    cursor: AtomicUsize,
    config: ClientConfig,
}

#[derive(Debug)]
struct Server {
    url: String,
    slots: Arc<Semaphore>,
}

/// Slot usage of one server of a [`Pool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSlots {
    /// The server's `/ws` URL.
    pub url: String,
    /// Sessions the pool holds open on it now.
    pub in_use: usize,
    /// The pool's cap for it.
    pub capacity: usize,
}

impl Pool {
    /// A pool over `urls` (normalised as [`ws_url`] does), with at most
    /// `max_sessions_per_server` sessions open on each, and the default [`ClientConfig`].
    pub fn new<I>(urls: I, max_sessions_per_server: usize) -> Result<Self, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::with_config(urls, max_sessions_per_server, ClientConfig::default())
    }

    /// [`Pool::new`] with the given client settings for every connection.
    pub fn with_config<I>(
        urls: I,
        max_sessions_per_server: usize,
        config: ClientConfig,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let invalid = |reason: &str| ClientError::InvalidConfig {
            reason: reason.to_owned(),
        };
        if max_sessions_per_server == 0 {
            return Err(invalid("max_sessions_per_server must be at least 1"));
        }
        let servers = urls
            .into_iter()
            .map(|url| {
                Ok(Server {
                    url: ws_url(url.as_ref())?,
                    slots: Arc::new(Semaphore::new(max_sessions_per_server)),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        if servers.is_empty() {
            return Err(invalid("a pool needs at least one server URL"));
        }
        let total = servers
            .len()
            .checked_mul(max_sessions_per_server)
            .filter(|&n| n <= Semaphore::MAX_PERMITS)
            .ok_or_else(|| invalid("too many sessions in total"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                servers,
                total: Arc::new(Semaphore::new(total)),
                max_per_server: max_sessions_per_server,
                cursor: AtomicUsize::new(0),
                config,
            }),
        })
    }

    /// The number of sessions the pool can hold open at once (servers × cap).
    pub fn capacity(&self) -> usize {
        self.inner.servers.len() * self.inner.max_per_server
    }

    /// Slot usage per server, in the order the URLs were given.
    pub fn stats(&self) -> Vec<ServerSlots> {
        let capacity = self.inner.max_per_server;
        self.inner
            .servers
            .iter()
            .map(|server| ServerSlots {
                url: server.url.clone(),
                in_use: capacity - server.slots.available_permits(),
                capacity,
            })
            .collect()
    }

    /// Opens a session on the server with the most free slots (ties rotate), waiting while
    /// every server is at its cap. The slot is held until the [`PooledClient`] is closed or
    /// dropped; a failed connect frees it at once.
    pub async fn acquire(&self) -> Result<PooledClient, ClientError> {
        let total = Arc::clone(&self.inner.total)
            .acquire_owned()
            .await
            .map_err(|_closed| ClientError::InvalidConfig {
                reason: "the pool is closed".to_owned(),
            })?;
        let (server, slot) = self
            .inner
            .take_slot()
            .ok_or_else(|| ClientError::InvalidConfig {
                reason: "no free server slot (pool accounting error)".to_owned(),
            })?;
        let url = &self.inner.servers[server].url;
        let client = EnvClient::connect_with(url, self.inner.config.clone()).await?;
        Ok(PooledClient {
            client,
            server,
            _slot: slot,
            _total: total,
        })
    }

    /// Runs `episodes` episodes, as many at once as the pool has slots, each on a fresh
    /// connection: acquire, `f(&client, episode_index)`, close. Returns each episode's result
    /// in index order. A failed connect or a failing `f` affects only its own episode; the
    /// session is closed (and its slot freed) either way. An error from `close` after a
    /// successful `f` is logged, not returned.
    ///
    /// The episodes run concurrently on the calling task; to use several cores, call `run`
    /// (or [`Pool::acquire`]) from several tasks: they share the caps.
    pub async fn run<F, T>(&self, episodes: usize, f: F) -> Vec<Result<T, ClientError>>
    where
        F: AsyncFn(&EnvClient, usize) -> Result<T, ClientError>,
    {
        let f = &f;
        let episode = |index: usize| async move { (index, self.episode(f, index).await) };
        let mut results: Vec<Option<Result<T, ClientError>>> =
            std::iter::repeat_with(|| None).take(episodes).collect();
        let mut running = FuturesUnordered::new();
        let mut next = 0;
        while next < episodes.min(self.capacity()) {
            running.push(episode(next));
            next += 1;
        }
        while let Some((index, result)) = running.next().await {
            results[index] = Some(result);
            if next < episodes {
                running.push(episode(next));
                next += 1;
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(ClientError::protocol("episode did not run")))
            })
            .collect()
    }

    async fn episode<F, T>(&self, f: &F, index: usize) -> Result<T, ClientError>
    where
        F: AsyncFn(&EnvClient, usize) -> Result<T, ClientError>,
    {
        let client = self.acquire().await?;
        let outcome = f(&client, index).await;
        let url = client.url().to_owned();
        if let Err(err) = client.close().await {
            tracing::debug!(%url, episode = index, error = %err, "closing an episode's session failed");
        }
        outcome
    }
}

impl Inner {
    /// Takes a slot on the server with the most free slots, ties broken by rotation.
    fn take_slot(&self) -> Option<(usize, OwnedSemaphorePermit)> {
        let n = self.servers.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable sort: equal free counts keep the rotated order.
        order.sort_by_key(|&i| Reverse(self.servers[i].slots.available_permits()));
        order.into_iter().find_map(|i| {
            Arc::clone(&self.servers[i].slots)
                .try_acquire_owned()
                .ok()
                .map(|permit| (i, permit))
        })
    }
}

/// A session opened by [`Pool::acquire`]: an [`EnvClient`] that holds its server slot until
/// it is closed or dropped.
#[derive(Debug)]
pub struct PooledClient {
    client: EnvClient,
    server: usize,
    // Field order matters: the server slot is released before the global permit.
    _slot: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl PooledClient {
    /// Index of the server (in the pool's URL order) this session is on.
    pub fn server_index(&self) -> usize {
        self.server
    }

    /// Ends the session ([`EnvClient::close`]) and frees its slot.
    pub async fn close(self) -> Result<(), ClientError> {
        let Self {
            client,
            _slot,
            _total,
            ..
        } = self;
        client.close().await
    }
}

impl Deref for PooledClient {
    type Target = EnvClient;

    fn deref(&self) -> &EnvClient {
        &self.client
    }
}

//! Routes: `/ws` (the OpenEnv protocol), `/mcp` (WebSocket and POST JSON-RPC), `/health`,
//! `/metadata`, `/schema`, `/openapi.json`, and the stateless HTTP `/reset`, `/step`, `/state`
//! (`PROTOCOL.md` §1, §3, §5, §6). [`run`] serves them until shutdown, then closes every
//! session.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use env_client::protocol::validation::{FieldKind, Loc};
use env_client::protocol::{
    ClientFrame, ErrorCode, ErrorData, HttpStepResponse, JsonMap, ObservationEnvelope, ServerFrame,
    ValidationErrorItem, frame_text, observation_frame_text, parse_client_frame,
    parse_json_lenient,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Limits;
use crate::envs::{Action, EnvError, EnvFactory, Environment, StepOutcome};
use crate::mcp::{self, Scope};
use crate::pyjson::to_python_json;
use crate::session::{
    AdmitError, EnvHandle, FrameHandler, Handled, Outgoing, Owner, Registry, catch_panic, drive,
};

/// Shared state of all routes.
pub struct AppState {
    /// The session table (and the env factory).
    pub registry: Arc<Registry>,
    /// Server-wide limits.
    pub limits: Limits,
    /// Cancelled on SIGINT/SIGTERM: every session closes.
    pub shutdown: CancellationToken,
    /// Tracks every WebSocket session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    openapi: Bytes,
    schema: Bytes,
    metadata: Bytes,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for serving `factory`'s env under `limits`.
    pub fn new(factory: Arc<dyn EnvFactory>, limits: Limits, shutdown: CancellationToken) -> Self {
        let schema = Bytes::from(factory.schema().to_string());
        let metadata = Bytes::from(factory.metadata().to_string());
        let openapi = Bytes::from(openapi_document(factory.name()).to_string());
        Self {
            registry: Arc::new(Registry::new(
                factory,
                limits.max_sessions as usize,
                shutdown.clone(),
            )),
            limits,
            shutdown,
            tracker: TaskTracker::new(),
            openapi,
            schema,
            metadata,
        }
    }
}

/// The router.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/ws", any(ws_route))
        .route("/mcp", post(mcp_post).get(mcp_ws_route))
        .route(
            "/health",
            get(|| async {
                json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"status":"healthy"}"#),
                )
            }),
        )
        .route(
            "/metadata",
            get(|State(s): State<Arc<AppState>>| async move {
                json_response(StatusCode::OK, s.metadata.clone())
            }),
        )
        .route(
            "/schema",
            get(|State(s): State<Arc<AppState>>| async move {
                json_response(StatusCode::OK, s.schema.clone())
            }),
        )
        .route(
            "/openapi.json",
            get(|State(s): State<Arc<AppState>>| async move {
                json_response(StatusCode::OK, s.openapi.clone())
            }),
        )
        .route("/reset", post(http_reset))
        .route("/step", post(http_step))
        .route("/state", get(http_state))
        .fallback(|| async {
            json_response(
                StatusCode::NOT_FOUND,
                Bytes::from_static(br#"{"detail":"Not Found"}"#),
            )
        })
        .method_not_allowed_fallback(|| async {
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(br#"{"detail":"Method Not Allowed"}"#),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_payload: Box<dyn std::any::Any + Send>| {
                // One bounded line: the panic hook logged where; the payload may quote the
                // request, so it is dropped unread (`docs/fuzzing.md`).
                tracing::error!("route handler panicked; answered 500");
                internal_error()
            },
        ))
        .with_state(state)
}

/// Serves `state` on `listener` until `state.shutdown` is cancelled, then closes every session
/// (each socket gets close 1001) and waits up to the grace period for them.
pub async fn run(listener: TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let reaper = spawn_reaper(&state);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let shutdown = state.shutdown.clone();
    axum::serve(listener, app(Arc::clone(&state)))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    state.tracker.close();
    let grace = state.limits.shutdown_grace();
    if tokio::time::timeout(grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tracker.len(),
            "shutdown grace expired with sessions still closing"
        );
    }
    state.registry.destroy_all().await;
    reaper.abort();
    // Cleanups that failed earlier get one last attempt (docs/cleanup.md).
    state.registry.factory().shutdown().await;
    tracing::info!("server stopped; every session closed");
    Ok(())
}

fn spawn_reaper(state: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let registry = Arc::clone(&state.registry);
    let idle = state.limits.idle_timeout();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let Some(idle) = idle else { return };
        let period = (idle / 4).max(Duration::from_secs(5)).min(idle);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => { registry.reap_idle(idle).await; }
            }
        }
    })
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_value_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    json_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Internal Server Error",
    )
        .into_response()
}

/// The answer to a body that cannot be read: 413 past `--max-body-bytes` (axum's
/// [`DefaultBodyLimit`], set in [`app`]), 400 for a body that broke off.
fn body_rejection(rejection: &BytesRejection, limit: usize) -> Response {
    let status = rejection.status();
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "Request body too large: the limit is {limit} bytes \
             (--max-body-bytes, ENV_SERVER_MAX_BODY_BYTES)"
        )
    } else {
        "Failed to read the request body".to_owned()
    };
    json_value_response(status, &json!({ "detail": detail }))
}

/// A request body read whole, for the HTTP routes: a body that cannot be read is answered by
/// [`body_rejection`] before the handler runs.
struct Body(Bytes);

impl FromRequest<Arc<AppState>> for Body {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| body_rejection(&rejection, state.limits.max_body_bytes))
    }
}

fn error_frame(data: ErrorData) -> String {
    frame_text(&ServerFrame::Error(data))
}

// ---------------------------------------------------------------------------------------------
// /ws

#[derive(Debug, Deserialize)]
struct WsQuery {
    session_id: Option<String>,
}

fn configure(upgrade: WebSocketUpgrade, limits: &Limits) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(limits.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
}

async fn ws_route(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return json_response(
            StatusCode::NOT_FOUND,
            Bytes::from_static(br#"{"detail":"Not Found"}"#),
        );
    };
    let tracker = state.tracker.clone();
    configure(upgrade, &state.limits)
        .on_upgrade(move |socket| tracker.track_future(serve_ws(socket, state, query.session_id)))
}

/// Refuses a connection the way clients of every generation read it: one error frame, then
/// close 1000 once the client has sent its first frame (or after a short wait), then a brief
/// wait for the client's close. Waiting for the first frame lets clients that send before
/// reading (the 0.3 generation) read the refusal as the reply instead of a closed socket.
async fn refuse(mut socket: WebSocket, frame: String) {
    const FIRST_FRAME_WAIT: Duration = Duration::from_secs(2);
    if socket.send(Message::Text(frame.into())).await.is_err() {
        return;
    }
    let peer_closed = matches!(
        tokio::time::timeout(FIRST_FRAME_WAIT, socket.next()).await,
        Ok(None | Some(Err(_) | Ok(Message::Close(_))))
    );
    if !peer_closed {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while socket.next().await.is_some() {}
    })
    .await;
}

async fn serve_ws(socket: WebSocket, state: Arc<AppState>, attach: Option<String>) {
    let registry = Arc::clone(&state.registry);
    let session = match attach {
        Some(id) => match registry.attach(&id) {
            Ok(session) => session,
            Err(err) => {
                tracing::info!(%err, "attach refused");
                return refuse(
                    socket,
                    error_frame(ErrorData::new(ErrorCode::SessionError, err.to_string())),
                )
                .await;
            }
        },
        None => match registry.admit(Owner::WebSocket).await {
            Ok(session) => session,
            Err(AdmitError::Capacity { active, max }) => {
                tracing::info!(active, max, "session refused: at capacity");
                return refuse(
                    socket,
                    error_frame(ErrorData::capacity_reached(active, max)),
                )
                .await;
            }
            Err(err @ AdmitError::Factory { factory_name, .. }) => {
                tracing::warn!(error = ?err, "environment factory failed");
                return refuse(socket, error_frame(ErrorData::factory_error(factory_name))).await;
            }
        },
    };
    let Some(env) = session.env().cloned() else {
        return;
    };
    let span =
        tracing::info_span!("session", session_id = %session.id, env = registry.factory().name());
    let handler = WsHandler {
        registry: Arc::clone(&registry),
        session_id: Arc::from(session.id.as_str()),
        env,
        has_tools: !registry.factory().tools().is_empty(),
    };
    async move {
        tracing::info!("session opened");
        let ended = drive(
            socket,
            handler,
            session,
            registry,
            state.limits.clone(),
            state.shutdown.clone(),
        )
        .await;
        tracing::info!(?ended, "session closed");
    }
    .instrument(span)
    .await;
}

/// The `/ws` protocol handler of one session.
struct WsHandler {
    registry: Arc<Registry>,
    session_id: Arc<str>,
    env: EnvHandle,
    has_tools: bool,
}

impl FrameHandler for WsHandler {
    fn on_text(&mut self, text: &str) -> Handled {
        let frame = match parse_client_frame(text) {
            Ok(ClientFrame::Close) => return Handled::Reply(Outgoing::close_requested()),
            Ok(frame) => frame,
            Err(err) => {
                let reply = error_frame(err.to_error_data());
                return Handled::Reply(if err.is_fatal() {
                    Outgoing::fatal(reply)
                } else {
                    Outgoing::frame(reply)
                });
            }
        };
        let env = Arc::clone(&self.env);
        let registry = Arc::clone(&self.registry);
        let session_id = Arc::clone(&self.session_id);
        let has_tools = self.has_tools;
        Handled::Pending(Box::pin(async move {
            let mut env = env.lock_owned().await;
            let kind = frame.type_name();
            catch_panic(
                async {
                    Outgoing::frame(
                        respond(&registry, &session_id, &mut **env, frame, has_tools).await,
                    )
                },
                || {
                    tracing::error!(frame = kind, "environment panicked; closing the session");
                    Outgoing::fatal(error_frame(ErrorData::new(
                        ErrorCode::SessionError,
                        "internal error in the environment",
                    )))
                },
            )
            .await
        }))
    }

    fn on_binary(&mut self) -> Outgoing {
        Outgoing::fatal(error_frame(ErrorData::new(
            ErrorCode::SessionError,
            "'text'",
        )))
    }

    fn on_idle_timeout(&mut self, idle: Duration) -> Outgoing {
        Outgoing::fatal(error_frame(ErrorData::new(
            ErrorCode::SessionError,
            format!(
                "Session idle timeout: no request for {} s; session closed",
                idle.as_secs()
            ),
        )))
    }
}

fn env_error(err: EnvError) -> ServerFrame {
    ServerFrame::Error(match err {
        EnvError::Validation { errors } => ErrorData::validation(&errors),
        EnvError::Execution { message } => ErrorData::new(ErrorCode::ExecutionError, message),
    })
}

/// The reply to a reset or step: its `observation` frame, written without copying its
/// metadata, or its error frame.
fn outcome_text(outcome: Result<StepOutcome, EnvError>) -> String {
    match outcome {
        Ok(out) => observation_frame_text(&out.observation, out.reward, out.done),
        Err(err) => frame_text(&env_error(err)),
    }
}

/// Answers one parsed frame (not `close`) on a session's env with the text of the reply.
async fn respond(
    registry: &Arc<Registry>,
    session_id: &str,
    env: &mut dyn Environment,
    frame: ClientFrame,
    has_tools: bool,
) -> String {
    let reply = match frame {
        ClientFrame::Reset { data } => return outcome_text(env.reset(data).await),
        ClientFrame::Step { data } => match Action::classify(data, has_tools) {
            Ok(action) => return outcome_text(env.step(action).await),
            Err(err) => env_error(err),
        },
        ClientFrame::State => ServerFrame::State(env.state()),
        ClientFrame::Mcp { data } => {
            ServerFrame::Mcp(mcp::dispatch(registry, Scope::Socket { session_id, env }, data).await)
        }
        ClientFrame::Verify { .. } => match env.verify().await {
            None => ServerFrame::Error(ErrorData::new(
                ErrorCode::UnknownType,
                "Unknown message type: verify",
            )),
            Some(Ok(result)) if result.reward.is_finite() => ServerFrame::Verify(result),
            Some(Ok(_)) => ServerFrame::Error(ErrorData::new(
                ErrorCode::ExecutionError,
                "verifier produced a non-finite reward",
            )),
            Some(Err(err)) => env_error(err),
        },
        ClientFrame::Close => ServerFrame::Error(ErrorData::new(
            ErrorCode::UnknownType,
            "Unknown message type: close",
        )),
    };
    frame_text(&reply)
}

// ---------------------------------------------------------------------------------------------
// /mcp WebSocket and POST

async fn mcp_ws_route(
    State(state): State<Arc<AppState>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(br#"{"detail":"Method Not Allowed"}"#),
        );
    };
    let tracker = state.tracker.clone();
    configure(upgrade, &state.limits)
        .on_upgrade(move |socket| tracker.track_future(serve_mcp_ws(socket, state)))
}

async fn serve_mcp_ws(socket: WebSocket, state: Arc<AppState>) {
    let registry = Arc::clone(&state.registry);
    let session = match registry.admit(Owner::WebSocket).await {
        Ok(session) => session,
        Err(err) => {
            let data = match &err {
                AdmitError::Capacity { active, max } => {
                    json!({"active_sessions": active, "max_sessions": max})
                }
                AdmitError::Factory { factory_name, .. } => json!({ "factory_name": factory_name }),
            };
            let reply = env_client::protocol::JsonRpcResponse::error_with_data(
                None,
                env_client::protocol::mcp::codes::SERVER_ERROR,
                err.to_string(),
                data,
            );
            return refuse(socket, to_python_json(&reply)).await;
        }
    };
    let Some(env) = session.env().cloned() else {
        return;
    };
    let span = tracing::info_span!("mcp_session", session_id = %session.id, env = registry.factory().name());
    let handler = McpSocketHandler {
        registry: Arc::clone(&registry),
        session_id: Arc::from(session.id.as_str()),
        env,
    };
    drive(
        socket,
        handler,
        session,
        registry,
        state.limits.clone(),
        state.shutdown.clone(),
    )
    .instrument(span)
    .await;
}

/// Bare JSON-RPC frames on the `/mcp` WebSocket, answered in Python `json.dumps` layout.
struct McpSocketHandler {
    registry: Arc<Registry>,
    session_id: Arc<str>,
    env: EnvHandle,
}

impl FrameHandler for McpSocketHandler {
    fn on_text(&mut self, text: &str) -> Handled {
        let body = match parse_json_lenient(text) {
            Ok(body) => body,
            Err(detail) => {
                return Handled::Reply(Outgoing::frame(to_python_json(&mcp::parse_error(Some(
                    &detail,
                )))));
            }
        };
        let (env, registry, session_id) = (
            Arc::clone(&self.env),
            Arc::clone(&self.registry),
            Arc::clone(&self.session_id),
        );
        Handled::Pending(Box::pin(async move {
            let mut env = env.lock_owned().await;
            let reply = mcp::dispatch(
                &registry,
                Scope::Socket {
                    session_id: &session_id,
                    env: &mut **env,
                },
                body,
            )
            .await;
            Outgoing::frame(to_python_json(&reply))
        }))
    }

    fn on_binary(&mut self) -> Outgoing {
        Outgoing::fatal(to_python_json(&mcp::parse_error(Some(
            "binary frames are not supported",
        ))))
    }

    fn on_idle_timeout(&mut self, idle: Duration) -> Outgoing {
        let reply = env_client::protocol::JsonRpcResponse::error(
            None,
            env_client::protocol::mcp::codes::SERVER_ERROR,
            format!(
                "Session idle timeout: no request for {} s; session closed",
                idle.as_secs()
            ),
        );
        Outgoing::fatal(to_python_json(&reply))
    }
}

async fn mcp_post(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let reply = match body_text(&body)
        .map_err(|_| ())
        .and_then(|t| parse_json_lenient(t).map_err(|_| ()))
    {
        Ok(value) => mcp::dispatch(&state.registry, Scope::Http, value).await,
        Err(()) => mcp::parse_error(None),
    };
    json_value_response(StatusCode::OK, &reply)
}

// ---------------------------------------------------------------------------------------------
// Stateless HTTP /reset, /step, /state

fn unprocessable(detail: &[ValidationErrorItem]) -> Response {
    json_value_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({ "detail": detail }),
    )
}

/// An HTTP body as text. Like Python's `json.loads` of the body's bytes (what FastAPI runs),
/// a leading UTF-8 BOM is dropped; on the `/ws` socket, where the frame is already text, a BOM
/// is the `INVALID_JSON` Python gives for it.
fn body_text(body: &[u8]) -> Result<&str, std::str::Utf8Error> {
    std::str::from_utf8(body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body))
}

/// Reads an optional JSON object body, as FastAPI does (empty body = `{}`).
fn body_object(body: &Bytes, required: bool) -> Result<JsonMap, Vec<ValidationErrorItem>> {
    if body.is_empty() && !required {
        return Ok(JsonMap::new());
    }
    let parsed = body_text(body)
        .map_err(|e| e.to_string())
        .and_then(parse_json_lenient);
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(vec![
            ValidationErrorItem::new(
                "model_attributes_type",
                vec![Loc::from("body")],
                "Input should be a valid dictionary or object to extract fields from",
                other,
            )
            .without_url(),
        ]),
        Err(detail) => {
            let mut item = ValidationErrorItem::new(
                "json_invalid",
                vec![Loc::from("body"), Loc::Index(0)],
                "JSON decode error",
                json!({}),
            )
            .without_url();
            item.ctx = Some(json!({ "error": detail.split(':').next().unwrap_or("Invalid JSON") }));
            Err(vec![item])
        }
    }
}

fn check_optional_str(
    body: &JsonMap,
    key: &str,
    max_len: usize,
    errors: &mut Vec<ValidationErrorItem>,
) {
    match body.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.chars().count() <= max_len => {}
        Some(Value::String(s)) => {
            let mut item = ValidationErrorItem::new(
                "string_too_long",
                vec![Loc::from("body"), Loc::from(key)],
                &format!("String should have at most {max_len} characters"),
                Value::from(s.as_str()),
            )
            .without_url();
            item.ctx = Some(json!({ "max_length": max_len }));
            errors.push(item);
        }
        Some(other) => errors.push(
            ValidationErrorItem::wrong_type(
                FieldKind::Str,
                vec![Loc::from("body"), Loc::from(key)],
                other.clone(),
            )
            .without_url(),
        ),
    }
}

/// The instance of one stateless request: [`EnvFactory::create_stateless`], so an env whose
/// episodes hold a sandbox creates none and refuses (`TERMINAL_ENV.md` §7).
async fn fresh_env(state: &AppState) -> Result<Box<dyn Environment>, Response> {
    state
        .registry
        .factory()
        .create_stateless()
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "environment factory failed (HTTP route)");
            internal_error()
        })
}

fn http_outcome(result: Result<StepOutcome, EnvError>) -> Response {
    match result {
        Ok(outcome) => {
            let envelope =
                ObservationEnvelope::new(outcome.observation, outcome.reward, outcome.done);
            json_value_response(StatusCode::OK, &HttpStepResponse::from(envelope))
        }
        Err(EnvError::Validation { errors }) => unprocessable(&errors),
        Err(err) => {
            tracing::warn!(error = %err, "environment failed (HTTP route)");
            internal_error()
        }
    }
}

async fn http_reset(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let kwargs = match body_object(&body, false) {
        Ok(map) => map,
        Err(errors) => return unprocessable(&errors),
    };
    let mut errors = Vec::new();
    match kwargs.get("seed") {
        None | Some(Value::Null) => {}
        Some(v) if FieldKind::Int.accepts(v) => {
            if v.as_f64().is_some_and(|s| s < 0.0) {
                let mut item = ValidationErrorItem::new(
                    "greater_than_equal",
                    vec![Loc::from("body"), Loc::from("seed")],
                    "Input should be greater than or equal to 0",
                    v.clone(),
                )
                .without_url();
                item.ctx = Some(json!({"ge": 0}));
                errors.push(item);
            }
        }
        Some(v) => errors.push(
            ValidationErrorItem::wrong_type(
                FieldKind::Int,
                vec![Loc::from("body"), Loc::from("seed")],
                v.clone(),
            )
            .without_url(),
        ),
    }
    check_optional_str(&kwargs, "episode_id", 255, &mut errors);
    if !errors.is_empty() {
        return unprocessable(&errors);
    }
    let mut env = match fresh_env(&state).await {
        Ok(env) => env,
        Err(resp) => return resp,
    };
    let result = env.reset(kwargs).await;
    env.close().await;
    http_outcome(result)
}

async fn http_step(State(state): State<Arc<AppState>>, Body(body): Body) -> Response {
    let mut request = match body_object(&body, true) {
        Ok(map) => map,
        Err(errors) => return unprocessable(&errors),
    };
    let mut errors = Vec::new();
    let action = match request.get("action") {
        None => {
            errors.push(
                ValidationErrorItem::missing(
                    vec![Loc::from("body"), Loc::from("action")],
                    Value::Object(request.clone()),
                )
                .without_url(),
            );
            JsonMap::new()
        }
        Some(Value::Object(a)) => a.clone(),
        Some(other) => {
            errors.push(
                ValidationErrorItem::wrong_type(
                    FieldKind::Object,
                    vec![Loc::from("body"), Loc::from("action")],
                    other.clone(),
                )
                .without_url(),
            );
            JsonMap::new()
        }
    };
    match request.get("timeout_s") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64().is_some_and(|t| t > 0.0) => {}
        Some(v) => {
            let mut item = ValidationErrorItem::new(
                "greater_than",
                vec![Loc::from("body"), Loc::from("timeout_s")],
                "Input should be greater than 0",
                v.clone(),
            )
            .without_url();
            item.ctx = Some(json!({"gt": 0.0}));
            errors.push(item);
        }
    }
    check_optional_str(&request, "request_id", 255, &mut errors);
    if !errors.is_empty() {
        return unprocessable(&errors);
    }
    request.clear();
    let has_tools = !state.registry.factory().tools().is_empty();
    let action = match Action::classify(action, has_tools) {
        Ok(action) => action,
        Err(err) => return http_outcome(Err(err)),
    };
    let mut env = match fresh_env(&state).await {
        Ok(env) => env,
        Err(resp) => return resp,
    };
    let result = env.step(action).await;
    env.close().await;
    http_outcome(result)
}

async fn http_state(State(state): State<Arc<AppState>>) -> Response {
    let mut env = match fresh_env(&state).await {
        Ok(env) => env,
        Err(resp) => return resp,
    };
    let current = env.state();
    env.close().await;
    // Through the env's declared state model (`/schema` `state`), as the official server does.
    json_value_response(StatusCode::OK, &current)
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

fn openapi_document(env: &str) -> Value {
    let json_body = |schema: Value| json!({"content": {"application/json": {"schema": schema}}});
    let ok = |description: &str, schema: Value| json!({"200": {"description": description, "content": {"application/json": {"schema": schema}}}});
    let step_response = json!({"$ref": "#/components/schemas/StepResponse"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "OpenEnv Environment HTTP API",
            "description": format!("openenv-rs serving the `{env}` environment. The core protocol is the WebSocket at /ws; these HTTP routes are the stateless OpenEnv routes (each request uses a fresh environment)."),
            "version": "1.0.0"
        },
        "paths": {
            "/reset": {"post": {"tags": ["Environment Control"], "summary": "Reset the environment", "operationId": "reset_reset_post",
                "requestBody": json_body(json!({"$ref": "#/components/schemas/ResetRequest"})),
                "responses": ok("Environment reset successfully", step_response.clone())}},
            "/step": {"post": {"tags": ["Environment Control"], "summary": "Execute an action in the environment", "operationId": "step_step_post",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StepRequest"}}}},
                "responses": ok("Action executed successfully", step_response)}},
            "/state": {"get": {"tags": ["State Management"], "summary": "Get current environment state", "operationId": "endpoint_state_get",
                "responses": ok("Successful Response", json!({"$ref": "#/components/schemas/State"}))}},
            "/metadata": {"get": {"tags": ["Environment Info"], "summary": "Get environment metadata", "operationId": "endpoint_metadata_get",
                "responses": ok("Successful Response", json!({"type": "object"}))}},
            "/health": {"get": {"tags": ["Health"], "summary": "Health check", "operationId": "endpoint_health_get",
                "responses": ok("Successful Response", json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["healthy", "unhealthy", "degraded"]}}}))}},
            "/schema": {"get": {"tags": ["Schema"], "summary": "Get all JSON schemas", "operationId": "get_schemas_schema_get",
                "responses": ok("Combined schemas retrieved successfully", json!({"type": "object"}))}},
            "/mcp": {"post": {"summary": "Mcp Endpoint", "description": "MCP JSON-RPC endpoint (tools/list, tools/call, openenv/session/create, openenv/session/close).", "operationId": "mcp_endpoint_mcp_post",
                "responses": ok("Successful Response", json!({"type": "object", "additionalProperties": true}))}}
        },
        "components": {"schemas": {
            "ResetRequest": {"type": "object", "additionalProperties": true, "title": "ResetRequest", "properties": {
                "seed": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}], "title": "Seed"},
                "episode_id": {"anyOf": [{"type": "string", "maxLength": 255}, {"type": "null"}], "title": "Episode Id"}}},
            "StepRequest": {"type": "object", "additionalProperties": true, "required": ["action"], "title": "StepRequest", "properties": {
                "action": {"type": "object", "additionalProperties": true, "title": "Action"},
                "timeout_s": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}], "title": "Timeout S"},
                "request_id": {"anyOf": [{"type": "string", "maxLength": 255}, {"type": "null"}], "title": "Request Id"}}},
            "StepResponse": {"type": "object", "additionalProperties": false, "required": ["observation"], "title": "StepResponse", "properties": {
                "observation": {"type": "object", "additionalProperties": true},
                "reward": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                "done": {"type": "boolean", "default": false},
                "metadata": {"anyOf": [{"type": "object", "additionalProperties": true}, {"type": "null"}]}}},
            "State": {"type": "object", "additionalProperties": true, "title": "State", "properties": {
                "episode_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "step_count": {"type": "integer", "minimum": 0, "default": 0}}}
        }}
    })
}

//! Wire frames against the official captures: server frames round-trip byte for byte (0.10
//! and 0.3 shapes); client frames equal the official ones after normalising `json.dumps`.

use env_client::protocol::{
    ClientFrame, EnvState, JsonMap, JsonRpcRequest, Observation, ObservationEnvelope, Reward,
    ServerFrame, observation_frame_text, parse_client_frame,
};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::{captures, normalise};

fn map(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn every_official_server_frame_round_trips_byte_for_byte() {
    let frames: Vec<_> = captures().into_iter().filter(|c| !c.from_client).collect();
    assert!(frames.len() > 80, "{} server frames", frames.len());
    let mut kinds = std::collections::BTreeSet::new();
    for captured in &frames {
        let frame: ServerFrame = serde_json::from_str(&captured.text).unwrap_or_else(|e| {
            panic!(
                "{} conn {}: {e}\n{}",
                captured.source, captured.conn, captured.text
            )
        });
        kinds.insert(match &frame {
            ServerFrame::Observation(_) => "observation",
            ServerFrame::State(_) => "state",
            ServerFrame::Error(_) => "error",
            ServerFrame::Mcp(_) => "mcp",
            ServerFrame::Verify(_) => "verify",
        });
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            captured.text,
            "{} conn {}",
            captured.source,
            captured.conn
        );
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["error", "mcp", "observation", "state"]
    );
}

#[test]
fn both_envelope_generations_parse() {
    let v010 = r#"{"type":"observation","data":{"observation":{"metadata":{"step":1},"echoed_message":"hello","message_length":5},"reward":0.5,"done":false,"metadata":{"step":1}}}"#;
    let v030 = r#"{"type":"observation","data":{"observation":{"echoed_message":"hello","message_length":5},"reward":0.5,"done":false}}"#;
    for (text, metadata) in [(v010, Some(map(json!({"step": 1})))), (v030, None)] {
        let ServerFrame::Observation(envelope) = serde_json::from_str(text).unwrap() else {
            panic!("not an observation");
        };
        assert_eq!(envelope.reward, Some(Reward::Float(0.5)));
        assert_eq!(envelope.metadata, metadata);
        assert_eq!(
            envelope.observation.get("echoed_message"),
            Some(&json!("hello"))
        );
    }
    // Rewards stay as sent: int, bool, null.
    for (reward, expected) in [
        ("1", Some(Reward::Int(1))),
        ("true", Some(Reward::Bool(true))),
        ("null", None),
        ("0.0", Some(Reward::Float(0.0))),
    ] {
        let text = format!(r#"{{"observation":{{}},"reward":{reward},"done":false}}"#);
        let envelope: ObservationEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(envelope.reward, expected);
        assert_eq!(serde_json::to_string(&envelope).unwrap(), text);
    }
}

#[test]
fn rewards_read_every_json_number_and_refuse_the_rest() {
    for (text, expected) in [
        ("-7", Reward::Int(-7)),
        ("9223372036854775807", Reward::Int(i64::MAX)),
        // Beyond i64: a float, as serde's untagged matching gave.
        (
            "18446744073709551615",
            Reward::Float(18_446_744_073_709_551_615.0),
        ),
        ("-0.25", Reward::Float(-0.25)),
        ("1e3", Reward::Float(1000.0)),
        ("false", Reward::Bool(false)),
    ] {
        assert_eq!(
            serde_json::from_str::<Reward>(text).unwrap(),
            expected,
            "{text}"
        );
    }
    for text in [r#""1""#, "[1]", r#"{"value":1}"#] {
        let err = serde_json::from_str::<Reward>(text).unwrap_err();
        assert!(
            err.to_string().contains("a boolean or a number"),
            "{text}: {err}"
        );
    }
}

#[test]
fn verify_frame_round_trips() {
    let text = r#"{"type":"verify","data":{"reward":1.0,"done":true,"details":{"step_count":2}}}"#;
    let frame: ServerFrame = serde_json::from_str(text).unwrap();
    assert!(matches!(&frame, ServerFrame::Verify(v) if v.reward == 1.0 && v.done));
    assert_eq!(serde_json::to_string(&frame).unwrap(), text);
}

#[test]
fn official_client_frames_reserialise_identically() {
    let mut checked = 0;
    for captured in captures().into_iter().filter(|c| c.from_client) {
        // The captures include deliberately bad frames (not JSON, unknown types, …).
        let Ok(frame) = parse_client_frame(&captured.text) else {
            continue;
        };
        let ours = serde_json::to_string(&frame).unwrap();
        assert_eq!(ours, normalise(&captured.text), "{}", captured.text);
        let (a, b): (Value, Value) = (
            serde_json::from_str(&ours).unwrap(),
            serde_json::from_str(&captured.text).unwrap(),
        );
        assert_eq!(a, b);
        checked += 1;
    }
    assert!(checked > 60, "{checked} client frames");
}

#[test]
fn frames_we_build_equal_the_official_ones() {
    let cases: Vec<(ClientFrame, &str)> = vec![
        (
            ClientFrame::Reset {
                data: map(json!({"seed": 42, "episode_id": "ep-capture-1", "difficulty": "easy"})),
            },
            r#"{"type": "reset", "data": {"seed": 42, "episode_id": "ep-capture-1", "difficulty": "easy"}}"#,
        ),
        (
            ClientFrame::Reset {
                data: JsonMap::new(),
            },
            r#"{"type": "reset", "data": {}}"#,
        ),
        (
            ClientFrame::Step {
                data: map(json!({"message": "héllo ✓"})),
            },
            r#"{"type": "step", "data": {"message": "h\u00e9llo \u2713"}}"#,
        ),
        (ClientFrame::State, r#"{"type": "state"}"#),
        (ClientFrame::Close, r#"{"type": "close"}"#),
        (
            ClientFrame::Step {
                data: map(json!({"type": "list_tools"})),
            },
            r#"{"type": "step", "data": {"type": "list_tools"}}"#,
        ),
        (
            ClientFrame::Step {
                data: map(
                    json!({"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "via step"}}),
                ),
            },
            r#"{"type": "step", "data": {"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "via step"}}}"#,
        ),
        (
            ClientFrame::Mcp {
                data: serde_json::to_value(JsonRpcRequest::new("tools/list", JsonMap::new(), 1))
                    .unwrap(),
            },
            r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}"#,
        ),
    ];
    for (frame, official) in cases {
        assert_eq!(serde_json::to_string(&frame).unwrap(), normalise(official));
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z0-9 éü✓😀\"\\\\\n\t]{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            json_object(inner).prop_map(Value::Object),
        ]
    })
}

fn json_object(values: impl Strategy<Value = Value>) -> impl Strategy<Value = JsonMap> {
    prop::collection::vec(("[a-z_]{1,8}", values), 0..5)
        .prop_map(|pairs| pairs.into_iter().collect())
}

fn reward() -> impl Strategy<Value = Option<Reward>> {
    prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(Reward::Bool(b))),
        any::<i64>().prop_map(|i| Some(Reward::Int(i))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Some(Reward::Float(f))),
    ]
}

proptest! {
    #[test]
    fn observation_envelopes_round_trip(
        metadata in prop::option::of(json_object(json_value())),
        fields in json_object(json_value()),
        reward in reward(),
        done in any::<bool>(),
        v030 in any::<bool>(),
    ) {
        let envelope = if v030 {
            // 0.3 shape: no metadata anywhere.
            let mut fields = fields;
            fields.remove("metadata");
            ObservationEnvelope { observation: Observation(fields), reward, done, metadata: None }
        } else {
            ObservationEnvelope::new(Observation::new(metadata.unwrap_or_default(), fields), reward, done)
        };
        let frame = ServerFrame::Observation(envelope);
        let text = serde_json::to_string(&frame).unwrap();
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn borrowed_observation_frames_match_the_envelope(
        metadata in prop::option::of(json_object(json_value())),
        fields in json_object(json_value()),
        reward in reward(),
        done in any::<bool>(),
        v030 in any::<bool>(),
    ) {
        let observation = if v030 {
            let mut fields = fields;
            fields.remove("metadata");
            Observation(fields)
        } else {
            Observation::new(metadata.unwrap_or_default(), fields)
        };
        let text = observation_frame_text(&observation, reward, done);
        let frame = ServerFrame::Observation(ObservationEnvelope::new(observation, reward, done));
        prop_assert_eq!(text, serde_json::to_string(&frame).unwrap());
    }

    #[test]
    fn env_states_round_trip(
        episode_id in prop::option::of("[a-z0-9-]{0,36}"),
        step_count in any::<u64>(),
        extra in json_object(json_value()),
    ) {
        let mut extra = extra;
        extra.remove("episode_id");
        extra.remove("step_count");
        let frame = ServerFrame::State(EnvState { episode_id, step_count, extra });
        let text = serde_json::to_string(&frame).unwrap();
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
}

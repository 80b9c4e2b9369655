//! The policy input document, built as Go's `opa.PreparedOpaInput` does.

use std::collections::BTreeMap;

use nsm_api::Path;
use nsm_networkservice::authorize::PolicyInput;
use regorus::Value;

fn obj(entries: Vec<(&str, Value)>) -> Value {
    Value::from(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// The Go JSON of `path` (`omitempty` everywhere), as a Rego value.
pub fn path_value(path: &Path) -> Value {
    let mut root = Vec::new();
    if path.index != 0 {
        root.push(("index", Value::from(u64::from(path.index))));
    }
    if !path.path_segments.is_empty() {
        let segments = path
            .path_segments
            .iter()
            .map(|s| {
                let mut seg = Vec::new();
                for (k, v) in [("name", &s.name), ("id", &s.id), ("token", &s.token)] {
                    if !v.is_empty() {
                        seg.push((k, Value::from(v.as_str())));
                    }
                }
                if let Some(ts) = &s.expires {
                    let mut t = Vec::new();
                    if ts.seconds != 0 {
                        t.push(("seconds", Value::from(ts.seconds)));
                    }
                    if ts.nanos != 0 {
                        t.push(("nanos", Value::from(i64::from(ts.nanos))));
                    }
                    seg.push(("expires", obj(t)));
                }
                if !s.metrics.is_empty() {
                    let m = s
                        .metrics
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                        .collect::<BTreeMap<_, _>>();
                    seg.push(("metrics", Value::from(m)));
                }
                obj(seg)
            })
            .collect::<Vec<_>>();
        root.push(("path_segments", Value::from(segments)));
    }
    obj(root)
}

/// The whole input: the path plus `auth_info.certificate`.
pub fn input_value(input: &PolicyInput) -> Value {
    let mut v = path_value(&input.path);
    let cert = input
        .peer
        .as_ref()
        .and_then(|p| p.certificate_pem.as_deref())
        .unwrap_or("");
    if let Ok(o) = v.as_object_mut() {
        o.insert(
            Value::from("auth_info"),
            obj(vec![("certificate", Value::from(cert))]),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use nsm_api::PathSegment;
    use nsm_core::values::PeerInfo;

    use super::*;

    #[test]
    fn matches_go_json_with_omitempty() {
        let mut seg = PathSegment::new("nsc", "id-1");
        seg.token = "t".into();
        seg.expires = Some(prost_types_ts(5, 0));
        let input = PolicyInput {
            path: Path {
                index: 0,
                path_segments: vec![seg, PathSegment::new("nsmgr", "")],
            },
            peer: Some(PeerInfo {
                certificate_pem: Some("PEM".into()),
                ..Default::default()
            }),
        };
        let got = input_value(&input);
        let want = Value::from_json_str(
            r#"{"path_segments":[{"name":"nsc","id":"id-1","token":"t","expires":{"seconds":5}},{"name":"nsmgr"}],
                "auth_info":{"certificate":"PEM"}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
        let empty = input_value(&PolicyInput::default());
        assert_eq!(
            empty,
            Value::from_json_str(r#"{"auth_info":{"certificate":""}}"#).unwrap()
        );
    }

    fn prost_types_ts(seconds: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos }
    }
}

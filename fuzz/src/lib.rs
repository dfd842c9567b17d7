//! Fuzz entry points, shared by the cargo-fuzz targets (`fuzz_targets/`) and by the
//! stable-toolchain corpus replay (`tests/it/input_fuzz_corpus.rs`, which includes this file).
//!
//! Each function must never panic on any input; the assertions inside are the properties
//! a crash would report.

use std::path::Path;
use std::time::{Duration, SystemTime};

use redeliver::api::{validate_assignment_spec, validate_guard_spec};
use redeliver::graph::BatchResult;
use redeliver::graph::models::{
    AccessPackage, AppRoleAssignment, Assignment, AssignmentPolicy, AssignmentRequest, DeltaGroup,
    DirectoryObject, ErrorEnvelope, Page, TokenErrorResponse, TokenResponse, User,
};
use serde::de::DeserializeOwned;

/// The declaration loader: any text loads into validated declarations or into errors that
/// each name the file and say something.
pub fn declarations(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    match redeliver_audit::load::load_str(file, text) {
        Ok(decls) => {
            for (origin, a) in &decls.assignments {
                assert!(validate_assignment_spec(&a.spec).is_ok());
                assert!(origin.line >= 1);
            }
            for (_, g) in &decls.guards {
                assert!(validate_guard_spec(&g.spec).is_ok());
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert_eq!(e.file, file);
                assert!(!e.message.trim().is_empty());
                assert!(e.to_string().starts_with("fuzz.yaml"));
            }
        }
    }
}

fn decode<T: DeserializeOwned + std::fmt::Debug>(body: &[u8]) -> Option<T> {
    let value = serde_json::from_slice::<T>(body).ok()?;
    let _ = format!("{value:?}");
    Some(value)
}

/// Graph JSON: the first byte picks what the body is decoded as (every wire type the
/// client reads, the `$batch` error mapping, `Retry-After`), the rest is the body.
pub fn graph_json(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 14 {
        0 => {
            decode::<Page<Assignment>>(body);
        }
        1 => {
            if let Some(p) = decode::<AccessPackage>(body) {
                // The engine's decoding of what a package promises is pure: run it too.
                let _ = redeliver::engine::promised_resources(
                    p.resource_role_scopes.as_deref().unwrap_or_default(),
                );
            }
        }
        2 => {
            decode::<Page<AssignmentRequest>>(body);
        }
        3 => {
            decode::<Page<AssignmentPolicy>>(body);
        }
        4 => {
            decode::<User>(body);
        }
        5 => {
            decode::<Page<DirectoryObject>>(body);
        }
        6 => {
            decode::<Page<DeltaGroup>>(body);
        }
        7 => {
            decode::<Page<AppRoleAssignment>>(body);
        }
        8 => {
            decode::<ErrorEnvelope>(body);
        }
        9 => {
            if let Ok(t) = serde_json::from_slice::<TokenResponse>(body) {
                let _ = t.expires_in;
            }
        }
        10 => {
            decode::<TokenErrorResponse>(body);
        }
        11 | 12 => batch_error(selector, body),
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
                if let Some(d) = redeliver::graph::retry::parse_retry_after(text, now) {
                    assert!(d <= Duration::from_secs(86_400), "Retry-After is capped");
                }
            }
        }
    }
}

/// A `$batch` inner response with any status, `Retry-After` and body, mapped like a direct
/// call's: decoded on 2xx, a typed error otherwise, with a printable message.
fn batch_error(selector: u8, body: &[u8]) {
    let (status_bytes, rest) = body.split_at(body.len().min(2));
    let status = match status_bytes {
        [a, b] => u16::from_be_bytes([*a, *b]),
        _ => 500,
    };
    let (retry_after, json) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let mut headers = std::collections::BTreeMap::new();
    if let Ok(ra) = std::str::from_utf8(retry_after) {
        headers.insert("retry-after".to_string(), ra.to_string());
    }
    let item = BatchResult {
        id: "1".into(),
        status,
        headers,
        body,
    };
    let success = item.is_success();
    let result = if selector.is_multiple_of(2) {
        item.into_result::<Page<DirectoryObject>>("list_group_members")
            .map(|_| ())
    } else {
        item.into_result::<AccessPackage>("get_access_package")
            .map(|_| ())
    };
    if let Err(e) = result {
        let text = e.to_string();
        assert!(!text.is_empty());
        let _ = e.kind();
        let _ = e.is_transient();
        let _ = redeliver::observe::stable_message(&e);
        if !success {
            assert_ne!(
                e.kind(),
                "decode",
                "a failed status is never a decode error"
            );
        }
    }
}

//! The committed CRD YAML under `crds/` must match what the Rust types generate.
//!
//! Regenerate with `UPDATE_CRDS=1 cargo test --test it crds_in_sync` (which calls
//! `redeliver::api::write_crds`) and commit the result.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    if std::env::var_os("UPDATE_CRDS").is_some() {
        redeliver::api::write_crds(&dir).expect("write crds/");
    }
    let mut stale = Vec::new();
    for crd in redeliver::api::crds() {
        let name = redeliver::api::crd_file_name(&crd);
        let want = redeliver::api::crd_yaml(&crd);
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        if have != want {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{} out of date with crates/operator/src/api; regenerate with \
         `UPDATE_CRDS=1 cargo test --test it crds_in_sync` (it calls redeliver::api::write_crds) \
         and commit the result",
        stale.join(", crds/")
    );
}

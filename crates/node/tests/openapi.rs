//! `docs/openapi.json` is the spec the node serves at `/openapi.json`, kept in the repository
//! so readers and client generators need no running server.

use std::path::PathBuf;

use gitvm_node::api::ApiDoc;
use utoipa::OpenApi;

#[test]
fn docs_copy_matches_generated_spec() {
    let generated = ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("GITVM_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "{} is out of date; refresh it with `GITVM_UPDATE_OPENAPI=1 cargo test -p gitvm-node --test openapi`",
        path.display()
    );
}

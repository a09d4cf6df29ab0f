//! `deploy/crds.yaml` is generated from the Rust types; this fails when someone changed the types
//! without regenerating it (run `cargo run -p tollgate-crds --bin crdgen`).

#[test]
fn committed_crds_yaml_is_up_to_date() {
    let generated = tollgate_crds::crds_yaml().expect("CRDs render");
    for file in ["deploy/crds.yaml", "charts/tollgate/crds/crds.yaml"] {
        let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == generated,
            "{file} is stale: run `cargo run -p tollgate-crds --bin crdgen` and commit the result"
        );
    }
}

#[test]
fn crds_carry_names_categories_and_cel_rules() {
    let yaml = tollgate_crds::crds_yaml().expect("CRDs render");
    for needle in [
        "name: apiroutes.tollgate.dev",
        "name: tenants.tollgate.dev",
        "name: quotapolicies.tollgate.dev",
        "- ar\n",
        "- tn\n",
        "- qp\n",
        "- tollgate\n",
        "exactly one of match.pathPrefix or match.path must be set",
        "exactly one of backend.service, backend.url or backend.directResponse must be set",
        "a quota with metric Cost needs spec.pricing",
        "approvedTenants is only allowed with approval: Manual",
        "x-kubernetes-list-map-keys",
        "status: {}",
    ] {
        assert!(yaml.contains(needle), "CRDs lack {needle:?}");
    }
}

//! The Kubernetes manifests in runtimeclass/ validated offline against the Kubernetes OpenAPI
//! schemas with `kubernetes-validate --strict` (PyPI; unknown fields are errors), each for the
//! Kubernetes versions it is meant for. `scripts/lib/deps.sh` installs the tool
//! (`bulwark_install_python_tools`); without it these tests fail saying so.

use bulwark_policy_tests::{doc, load_docs, manifest_path, schema_check};

fn check(rel: &str, versions: &[&str]) {
    for v in versions {
        if let Err(e) = schema_check(&manifest_path(rel), v) {
            panic!("{e}");
        }
    }
}

#[test]
fn runtimeclass_is_valid() {
    check("runtimeclass.yaml", &["1.37.0", "1.30.0"]);
}

#[test]
fn validating_policy_is_valid() {
    // admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: GA in 1.30.
    check("admission/validating-policy.yaml", &["1.37.0", "1.30.0"]);
}

#[test]
fn mutating_policy_v1_is_valid() {
    check("admission/mutating-policy.yaml", &["1.37.0", "1.36.0"]);
}

#[test]
fn mutating_policy_v1beta1_is_valid() {
    check("admission/mutating-policy-v1beta1.yaml", &["1.35.0", "1.34.0"]);
}

#[test]
fn example_namespace_is_valid() {
    check("example/hard-tenancy-namespace.yaml", &["1.37.0"]);
}

/// The node installer (install/): service account, role and binding, and the install and
/// uninstall DaemonSets, privileged with hostPID and the node's root mounted.
#[test]
fn node_install_daemonsets_are_valid() {
    check("install/daemonset.yaml", &["1.37.0", "1.30.0"]);
    check("install/uninstall-daemonset.yaml", &["1.37.0", "1.30.0"]);
    let docs = load_docs("install/daemonset.yaml");
    let ds = doc(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "nsenter into the node's namespaces needs hostPID");
    assert_eq!(pod["containers"][0]["securityContext"]["privileged"], true);
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/");
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/host", "entrypoint.sh's --host-root");
    assert_eq!(pod["containers"][0]["args"][0], "install");
    let un = load_docs("install/uninstall-daemonset.yaml");
    assert_eq!(doc(&un, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"][0], "uninstall");
    assert_eq!(
        doc(&un, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"],
        pod["serviceAccountName"],
        "the uninstall DaemonSet uses the installer's service account"
    );
}

/// A CRD kind that kubernetes-validate has no schema for: at least it parses, with the kind
/// and apiVersion Kyverno serves.
#[test]
fn kyverno_policy_parses() {
    let docs = load_docs("admission/kyverno-policy.yaml");
    assert_eq!(docs.len(), 1);
    assert_eq!(doc(&docs, "ClusterPolicy")["apiVersion"], "kyverno.io/v1");
}

/// The check has teeth: an unknown field, a wrong type and a misspelt kind are all errors.
#[test]
fn strict_validation_rejects_bad_manifests() {
    let dir = std::env::temp_dir().join(format!("bwk-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("unknown-field", "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: x}\nhandler: x\nhandlr: y\n"),
        (
            "wrong-type",
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {name: x}\nspec: {policyName: x, validationActions: Deny}\n",
        ),
        ("no-such-kind", "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingAdmissionPolice\nmetadata: {name: x}\n"),
    ];
    for (name, text) in cases {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        let r = schema_check(&path, "1.37.0");
        assert!(r.is_err(), "{name}: kubernetes-validate accepted it: {r:?}");
        assert!(!r.unwrap_err().contains("not found"), "{name}: the tool is missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! The MutatingAdmissionPolicy (runtimeclass/admission/mutating-policy.yaml): its JSONPatch
//! CEL evaluated with kube-cel and the patches applied to sample pods; then the validating
//! policy on the result, as the API server runs them (mutating first). Also: the v1beta1 copy
//! and the Kyverno policy say the same as the v1 policy.

use bulwark_policy_tests::{doc, jsonpatch_literals_to_maps, load_docs, mutate, selector_matches, validate, Request};
use serde_json::{json, Value as Json};

fn mutating() -> Json {
    doc(&load_docs("admission/mutating-policy.yaml"), "MutatingAdmissionPolicy").clone()
}

fn validating() -> Json {
    doc(&load_docs("admission/validating-policy.yaml"), "ValidatingAdmissionPolicy").clone()
}

fn namespace(name: &str, labels: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn acme_ns() -> Json {
    namespace("acme-prod", json!({"bulwark.io/hard-tenancy": "true", "bulwark.io/tenant": "acme"}))
}

/// A tenant's pod as written, with nothing Bulwark-specific; `f` changes it.
fn pod(f: impl FnOnce(&mut Json)) -> Json {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "acme-prod"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    f(&mut p);
    p
}

fn mutated(p: Json, ns: Json) -> Json {
    mutate(&mutating(), &Request::create(p, ns)).unwrap_or_else(|e| panic!("the mutating policy failed: {e}"))
}

#[test]
fn sets_the_runtime_class_and_stamps_the_tenant() {
    let out = mutated(pod(|_| {}), acme_ns());
    assert_eq!(out["spec"]["runtimeClassName"], "bulwark");
    assert_eq!(out["metadata"]["annotations"], json!({"bulwark.io/tenant": "acme"}));
    assert_eq!(out["spec"]["containers"], pod(|_| {})["spec"]["containers"], "nothing else changes");

    // Other annotations stay; an empty runtimeClassName counts as none.
    let out = mutated(
        pod(|p| {
            p["metadata"]["annotations"] = json!({"prometheus.io/scrape": "true"});
            p["spec"]["runtimeClassName"] = json!("");
        }),
        acme_ns(),
    );
    assert_eq!(out["spec"]["runtimeClassName"], "bulwark");
    assert_eq!(out["metadata"]["annotations"], json!({"prometheus.io/scrape": "true", "bulwark.io/tenant": "acme"}));
}

#[test]
fn a_forged_tenant_annotation_is_replaced() {
    let out = mutated(pod(|p| p["metadata"]["annotations"] = json!({"bulwark.io/tenant": "bigcorp"})), acme_ns());
    assert_eq!(out["metadata"]["annotations"]["bulwark.io/tenant"], "acme");
}

#[test]
fn the_tenant_comes_from_capsule_then_our_label_then_the_namespace_name() {
    let tenant_in = |labels: Json| {
        let ns = namespace("team-ns", labels);
        mutated(pod(|_| {}), ns)["metadata"]["annotations"]["bulwark.io/tenant"].clone()
    };
    assert_eq!(tenant_in(json!({"bulwark.io/hard-tenancy": "true", "capsule.clastix.io/tenant": "beta"})), "beta");
    assert_eq!(
        tenant_in(
            json!({"bulwark.io/hard-tenancy": "true", "capsule.clastix.io/tenant": "beta", "bulwark.io/tenant": "acme"})
        ),
        "beta"
    );
    assert_eq!(tenant_in(json!({"bulwark.io/hard-tenancy": "true", "bulwark.io/tenant": "acme"})), "acme");
    assert_eq!(tenant_in(json!({"bulwark.io/hard-tenancy": "true"})), "team-ns");
    let bare = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bare"}});
    assert_eq!(mutated(pod(|_| {}), bare)["metadata"]["annotations"]["bulwark.io/tenant"], "bare");
}

#[test]
fn another_runtime_class_is_left_for_the_validating_policy_to_refuse() {
    let out = mutated(pod(|p| p["spec"]["runtimeClassName"] = json!("runc")), acme_ns());
    assert_eq!(out["spec"]["runtimeClassName"], "runc");
    let denied = validate(&validating(), &Request::create(out, acme_ns())).unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0].contains("set spec.runtimeClassName: bulwark instead of runc"), "{denied:?}");
}

/// Mutating then validating, as the API server does: a plain pod is admitted as a Bulwark pod
/// of the namespace's tenant; a pod with a forged tenant is corrected; what the mutation cannot
/// fix is still refused.
#[test]
fn mutated_pods_pass_the_validating_policy() {
    for (case, p) in [
        ("plain pod", pod(|_| {})),
        ("forged tenant", pod(|p| p["metadata"]["annotations"] = json!({"bulwark.io/tenant": "bigcorp"}))),
        ("explicit bulwark", pod(|p| p["spec"]["runtimeClassName"] = json!("bulwark"))),
    ] {
        let out = mutated(p, acme_ns());
        let denied = validate(&validating(), &Request::create(out, acme_ns())).unwrap();
        assert!(denied.is_empty(), "{case}: {denied:?}");
    }
    let out = mutated(pod(|p| p["spec"]["hostNetwork"] = json!(true)), acme_ns());
    let denied = validate(&validating(), &Request::create(out, acme_ns())).unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0].contains("hostNetwork"), "{denied:?}");
}

#[test]
fn both_policies_derive_the_tenant_the_same_way() {
    let vars = |p: &Json| -> Vec<(String, String)> {
        p["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| ["nsLabels", "capsuleTenant", "labelTenant", "tenant"].contains(&v["name"].as_str().unwrap()))
            .map(|v| (v["name"].as_str().unwrap().to_string(), v["expression"].as_str().unwrap().to_string()))
            .collect()
    };
    let m = vars(&mutating());
    assert_eq!(m.len(), 4);
    assert_eq!(m, vars(&validating()));
}

#[test]
fn the_mutating_policy_runs_on_pod_creation_in_hard_tenancy_namespaces() {
    let docs = load_docs("admission/mutating-policy.yaml");
    let spec = &doc(&docs, "MutatingAdmissionPolicy")["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(spec["reinvocationPolicy"], "IfNeeded");
    assert_eq!(spec["matchConstraints"]["resourceRules"][0]["resources"], json!(["pods"]));
    assert_eq!(spec["matchConstraints"]["resourceRules"][0]["operations"], json!(["CREATE"]));
    let binding = doc(&docs, "MutatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], doc(&docs, "MutatingAdmissionPolicy")["metadata"]["name"]);
    let vdocs = load_docs("admission/validating-policy.yaml");
    assert_eq!(
        binding["spec"]["matchResources"],
        doc(&vdocs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"],
        "the mutating and validating bindings select the same namespaces"
    );
    assert!(selector_matches(
        &binding["spec"]["matchResources"]["namespaceSelector"],
        &acme_ns()["metadata"]["labels"]
    ));
}

#[test]
fn the_v1beta1_policy_is_the_v1_policy() {
    let v1 = load_docs("admission/mutating-policy.yaml");
    let beta = load_docs("admission/mutating-policy-v1beta1.yaml");
    assert_eq!(v1.len(), beta.len());
    for (a, b) in v1.iter().zip(&beta) {
        assert_eq!(a["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(b["apiVersion"], "admissionregistration.k8s.io/v1beta1");
        let strip = |d: &Json| {
            let mut d = d.clone();
            d.as_object_mut().unwrap().remove("apiVersion");
            d
        };
        assert_eq!(
            strip(a),
            strip(b),
            "mutating-policy-v1beta1.yaml differs from mutating-policy.yaml beyond apiVersion"
        );
    }
}

#[test]
fn the_kyverno_policy_says_the_same() {
    let docs = load_docs("admission/kyverno-policy.yaml");
    let p = doc(&docs, "ClusterPolicy");
    assert_eq!(p["apiVersion"], "kyverno.io/v1");
    let rules = p["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    let res = &r["match"]["any"][0]["resources"];
    assert_eq!(res["kinds"], json!(["Pod"]));
    assert_eq!(res["operations"], json!(["CREATE"]));
    let vdocs = load_docs("admission/validating-policy.yaml");
    assert_eq!(
        res["namespaceSelector"],
        doc(&vdocs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"]["namespaceSelector"]
    );
    let psm = &r["mutate"]["patchStrategicMerge"];
    assert_eq!(psm["spec"]["+(runtimeClassName)"], "bulwark", "runtimeClassName only when the pod names none");
    let tenant = psm["metadata"]["annotations"]["bulwark.io/tenant"].as_str().unwrap();
    let order = ["capsule.clastix.io/tenant", "bulwark.io/tenant", "request.namespace"].map(|s| tenant.find(s));
    assert!(order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]), "tenant order in {tenant:?}");
    assert!(r["context"][0]["apiCall"]["urlPath"].as_str().unwrap().contains("{{request.namespace}}"));
}

#[test]
fn jsonpatch_literals_become_maps_and_nothing_else_changes() {
    let (out, n) = jsonpatch_literals_to_maps(
        r#"[JSONPatch{op: "add", path: "/a", value: {"op": 'x, y: z', k: [1, {b: 2}]}}] + [JSONPatch{ op : "remove", path: "/b"}]"#,
    );
    assert_eq!(n, 2);
    assert_eq!(
        out,
        r#"[{"op": "add", "path": "/a", "value": {"op": 'x, y: z', k: [1, {b: 2}]}}] + [{ "op" : "remove", "path": "/b"}]"#
    );
}

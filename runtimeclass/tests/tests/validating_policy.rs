//! The ValidatingAdmissionPolicy (runtimeclass/admission/validating-policy.yaml), its CEL
//! evaluated with kube-cel against a table of sample pods and namespaces: what it admits, what
//! it refuses and with which message, including attempts to get around it.

use bulwark_policy_tests::{doc, load_docs, selector_matches, validate, Request};
use serde_json::{json, Value as Json};

fn policy() -> Json {
    doc(&load_docs("admission/validating-policy.yaml"), "ValidatingAdmissionPolicy").clone()
}

fn namespace(name: &str, labels: Json) -> Json {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// acme-prod: hard tenancy, tenant `acme` by our label.
fn acme_ns() -> Json {
    namespace("acme-prod", json!({"bulwark.io/hard-tenancy": "true", "bulwark.io/tenant": "acme"}))
}

/// A Capsule namespace of tenant `beta`.
fn capsule_ns() -> Json {
    namespace("beta-dev", json!({"bulwark.io/hard-tenancy": "true", "capsule.clastix.io/tenant": "beta"}))
}

/// A pod that passes in acme-prod; `f` changes it.
fn pod(f: impl FnOnce(&mut Json)) -> Json {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "acme-prod", "annotations": {"bulwark.io/tenant": "acme"}},
        "spec": {
            "runtimeClassName": "bulwark",
            "containers": [{"name": "app", "image": "busybox", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["NET_RAW"]}}}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    });
    f(&mut p);
    p
}

/// The messages of the validations that refuse `req` (empty: admitted); an evaluation error
/// fails the test.
fn run(req: Request) -> Vec<String> {
    validate(&policy(), &req).unwrap_or_else(|e| panic!("the policy failed to evaluate: {e}\nrequest: {req:#?}"))
}

fn assert_admitted(case: &str, req: Request) {
    let denied = run(req);
    assert!(denied.is_empty(), "{case}: should be admitted, was refused: {denied:#?}");
}

/// Refused with exactly one message, which contains every one of `needles`.
fn assert_refused(case: &str, req: Request, needles: &[&str]) {
    let denied = run(req);
    assert_eq!(denied.len(), 1, "{case}: should be refused for exactly one reason, got {denied:#?}");
    for n in needles {
        assert!(denied[0].contains(n), "{case}: message {:?} should contain {n:?}", denied[0]);
    }
}

#[test]
fn admits_a_well_formed_bulwark_pod() {
    assert_admitted("baseline pod", Request::create(pod(|_| {}), acme_ns()));
    assert_admitted(
        "explicit false host namespaces and privileged",
        Request::create(
            pod(|p| {
                p["spec"]["hostNetwork"] = json!(false);
                p["spec"]["hostPID"] = json!(false);
                p["spec"]["hostIPC"] = json!(false);
                p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(false);
                p["spec"]["initContainers"] =
                    json!([{"name": "setup", "image": "busybox", "securityContext": {"privileged": false}}]);
            }),
            acme_ns(),
        ),
    );
    assert_admitted(
        "allowed capabilities in any case, with other volume kinds",
        Request::create(
            pod(|p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["chown", "Kill", "SYS_CHROOT"]);
                p["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
            }),
            acme_ns(),
        ),
    );
}

#[test]
fn refuses_pods_that_do_not_run_in_bulwark() {
    assert_refused(
        "no runtimeClassName",
        Request::create(
            pod(|p| {
                p["spec"].as_object_mut().unwrap().remove("runtimeClassName");
            }),
            acme_ns(),
        ),
        &["set spec.runtimeClassName: bulwark", "acme-prod", "mutating policy"],
    );
    for other in ["runc", "kata", "Bulwark", "bulwark-debug", ""] {
        assert_refused(
            &format!("runtimeClassName {other:?}"),
            Request::create(pod(|p| p["spec"]["runtimeClassName"] = json!(other)), acme_ns()),
            &["set spec.runtimeClassName: bulwark", &format!("instead of {other}")],
        );
    }
}

#[test]
fn refuses_host_namespaces() {
    for (field, hint) in [("hostNetwork", "Service"), ("hostPID", "remove hostPID"), ("hostIPC", "remove hostIPC")] {
        assert_refused(
            field,
            Request::create(pod(|p| p["spec"][field] = json!(true)), acme_ns()),
            &[&format!("spec.{field}: true is not allowed"), hint],
        );
    }
}

#[test]
fn refuses_privileged_containers_of_every_kind() {
    assert_refused(
        "privileged container",
        Request::create(pod(|p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true)), acme_ns()),
        &["privileged containers are not allowed", "container app", "remove securityContext.privileged"],
    );
    assert_refused(
        "privileged init container (the app container is clean)",
        Request::create(
            pod(
                |p| p["spec"]["initContainers"] = json!([{"name": "ok", "image": "busybox"}, {"name": "setup", "image": "busybox", "securityContext": {"privileged": true}}]),
            ),
            acme_ns(),
        ),
        &["init container setup"],
    );
    assert_refused(
        "privileged ephemeral container in a new pod",
        Request::create(
            pod(|p| {
                p["spec"]["ephemeralContainers"] =
                    json!([{"name": "debugger", "image": "busybox", "securityContext": {"privileged": true}}])
            }),
            acme_ns(),
        ),
        &["ephemeral container debugger"],
    );
    // kubectl debug: an UPDATE of the pods/ephemeralcontainers subresource.
    let running = pod(|_| {});
    let debugged = pod(|p| {
        p["spec"]["ephemeralContainers"] =
            json!([{"name": "debugger", "image": "busybox", "securityContext": {"privileged": true}}])
    });
    let mut req = Request::update(running.clone(), debugged, acme_ns());
    req.sub_resource = "ephemeralcontainers";
    assert_refused("kubectl debug --profile=sysadmin", req, &["ephemeral container debugger"]);
    let plain_debug = pod(|p| p["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]));
    let mut req = Request::update(running, plain_debug, acme_ns());
    req.sub_resource = "ephemeralcontainers";
    assert_admitted("an unprivileged ephemeral container", req);
    // Each privileged container is named.
    let denied = run(Request::create(
        pod(|p| {
            p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
            p["spec"]["initContainers"] =
                json!([{"name": "setup", "image": "busybox", "securityContext": {"privileged": true}}]);
        }),
        acme_ns(),
    ));
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0].contains("container app, init container setup"), "{denied:?}");
}

#[test]
fn refuses_host_path_volumes() {
    assert_refused(
        "hostPath volume",
        Request::create(
            pod(
                |p| p["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}, {"name": "docker-sock", "hostPath": {"path": "/var/run/docker.sock"}}]),
            ),
            acme_ns(),
        ),
        &["hostPath volumes are not allowed", "docker-sock", "emptyDir"],
    );
}

#[test]
fn refuses_capabilities_beyond_the_list() {
    for (caps, named) in [
        (json!(["NET_ADMIN"]), "container app adds NET_ADMIN"),
        (json!(["CHOWN", "sys_admin"]), "container app adds sys_admin"),
        (json!(["CAP_SYS_ADMIN"]), "CAP_SYS_ADMIN"),
        (json!(["ALL"]), "adds ALL"),
        (json!(["NET_RAW"]), "adds NET_RAW"),
    ] {
        assert_refused(
            &format!("add {caps}"),
            Request::create(
                pod(|p| p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = caps.clone()),
                acme_ns(),
            ),
            &["capabilities beyond the allowed list", named, "may name only AUDIT_WRITE, CHOWN"],
        );
    }
    assert_refused(
        "an init container adding SYS_ADMIN",
        Request::create(
            pod(
                |p| p["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]),
            ),
            acme_ns(),
        ),
        &["init container setup adds SYS_ADMIN"],
    );
    let running = pod(|_| {});
    let debugged = pod(|p| {
        p["spec"]["ephemeralContainers"] =
            json!([{"name": "dbg", "image": "busybox", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}])
    });
    let mut req = Request::update(running, debugged, acme_ns());
    req.sub_resource = "ephemeralcontainers";
    assert_refused("an ephemeral container adding SYS_PTRACE", req, &["ephemeral container dbg adds SYS_PTRACE"]);
}

#[test]
fn the_tenant_annotation_must_name_the_namespaces_tenant() {
    assert_refused(
        "a pod naming another tenant",
        Request::create(pod(|p| p["metadata"]["annotations"]["bulwark.io/tenant"] = json!("bigcorp")), acme_ns()),
        &["bulwark.io/tenant=bigcorp names another tenant", "belongs to tenant acme"],
    );
    assert_refused(
        "a pod without the annotation (no mutating policy ran)",
        Request::create(pod(|p| p["metadata"] = json!({"name": "web", "namespace": "acme-prod"})), acme_ns()),
        &["must carry the annotation bulwark.io/tenant=acme"],
    );
    // Capsule's label names the tenant, and wins over a bulwark.io/tenant label the tenant set.
    let beta = |t: &str| {
        let t = t.to_string();
        pod(move |p| {
            p["metadata"]["namespace"] = json!("beta-dev");
            p["metadata"]["annotations"]["bulwark.io/tenant"] = json!(t);
        })
    };
    assert_admitted("Capsule tenant", Request::create(beta("beta"), capsule_ns()));
    assert_refused(
        "Capsule namespace, annotation acme",
        Request::create(beta("acme"), capsule_ns()),
        &["belongs to tenant beta"],
    );
    // Without a tenant label the namespace's name is the tenant (as the shim's fallback).
    let solo = namespace("solo", json!({"bulwark.io/hard-tenancy": "true"}));
    let solo_pod = |t: &str| {
        let t = t.to_string();
        pod(move |p| p["metadata"]["annotations"]["bulwark.io/tenant"] = json!(t))
    };
    assert_admitted("tenant = namespace name", Request::create(solo_pod("solo"), solo.clone()));
    assert_refused(
        "namespace name, annotation acme",
        Request::create(solo_pod("acme"), solo),
        &["belongs to tenant solo"],
    );
    // Namespace labels that disagree: no pod until an administrator fixes them.
    let both = namespace(
        "mixed",
        json!({"bulwark.io/hard-tenancy": "true", "capsule.clastix.io/tenant": "beta", "bulwark.io/tenant": "acme"}),
    );
    let denied = run(Request::create(solo_pod("beta"), both));
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0].contains("name different tenants"), "{denied:?}");
}

#[test]
fn updates_cannot_change_or_drop_the_tenant() {
    let running = pod(|_| {});
    assert_admitted(
        "a label change",
        Request::update(running.clone(), pod(|p| p["metadata"]["labels"] = json!({"version": "2"})), acme_ns()),
    );
    assert_refused(
        "annotation changed to another tenant",
        Request::update(
            running.clone(),
            pod(|p| p["metadata"]["annotations"]["bulwark.io/tenant"] = json!("bigcorp")),
            acme_ns(),
        ),
        &["names another tenant"],
    );
    assert_refused(
        "annotation removed (the namespace name would then pick the policy)",
        Request::update(running, pod(|p| p["metadata"]["annotations"] = json!({})), acme_ns()),
        &["must carry the annotation"],
    );
}

/// A pod admitted with runc before its namespace got the hard-tenancy label.
fn legacy_pod() -> Json {
    pod(|p| {
        p["spec"].as_object_mut().unwrap().remove("runtimeClassName");
        p["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "3"});
        p["metadata"]["finalizers"] = json!(["batch.kubernetes.io/job-tracking"]);
        p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    })
}

#[test]
fn pods_admitted_before_the_namespace_label_can_only_be_finished() {
    let old = legacy_pod();
    let mut done = old.clone();
    done["metadata"]["finalizers"] = json!([]);
    assert_admitted("a controller removes its finalizer", Request::update(old.clone(), done, acme_ns()));
    let mut debugged = old.clone();
    debugged["spec"]["ephemeralContainers"] = json!([{"name": "dbg", "image": "busybox"}]);
    let mut req = Request::update(old.clone(), debugged, acme_ns());
    req.sub_resource = "ephemeralcontainers";
    let denied = run(req);
    assert!(
        denied.iter().any(|m| m.contains("admitted before namespace acme-prod was labelled")
            && m.contains("delete it and recreate it")),
        "kubectl debug on a legacy pod: {denied:#?}"
    );
    let mut new_image = old.clone();
    new_image["spec"]["containers"][0]["image"] = json!("busybox:2");
    let denied = run(Request::update(old.clone(), new_image, acme_ns()));
    assert!(
        denied.iter().any(|m| m.contains("admitted before namespace")),
        "image update on a legacy pod: {denied:#?}"
    );
    assert!(denied.iter().any(|m| m.contains("NET_ADMIN")), "the other faults are named too: {denied:#?}");
    let mut forged = old.clone();
    forged["metadata"]["annotations"]["bulwark.io/tenant"] = json!("bigcorp");
    assert_refused(
        "a legacy pod given another tenant",
        Request::update(old, forged, acme_ns()),
        &["names another tenant"],
    );
}

#[test]
fn every_fault_is_reported_at_once() {
    let denied = run(Request::create(
        pod(|p| {
            p["spec"]["runtimeClassName"] = json!("runc");
            p["spec"]["hostNetwork"] = json!(true);
            p["spec"]["hostPID"] = json!(true);
            p["spec"]["hostIPC"] = json!(true);
            p["spec"]["containers"][0]["securityContext"] =
                json!({"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}});
            p["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
            p["metadata"]["annotations"]["bulwark.io/tenant"] = json!("bigcorp");
        }),
        acme_ns(),
    ));
    assert_eq!(denied.len(), 8, "{denied:#?}");
}

#[test]
fn the_policy_sees_pods_and_kubectl_debug_in_hard_tenancy_namespaces_only() {
    let docs = load_docs("admission/validating-policy.yaml");
    let spec = &doc(&docs, "ValidatingAdmissionPolicy")["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    let rules = spec["matchConstraints"]["resourceRules"].as_array().unwrap();
    let has = |field: &str, v: &str| rules.iter().any(|r| r[field].as_array().unwrap().iter().any(|x| x == v));
    assert!(has("resources", "pods") && has("resources", "pods/ephemeralcontainers"), "{rules:?}");
    assert!(has("operations", "CREATE") && has("operations", "UPDATE"), "{rules:?}");
    let binding = doc(&docs, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], doc(&docs, "ValidatingAdmissionPolicy")["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    let sel = &binding["spec"]["matchResources"]["namespaceSelector"];
    assert!(selector_matches(sel, &acme_ns()["metadata"]["labels"]));
    assert!(selector_matches(sel, &capsule_ns()["metadata"]["labels"]));
    assert!(!selector_matches(sel, &json!({"bulwark.io/tenant": "acme"})), "a plain namespace is not selected");
    assert!(!selector_matches(sel, &json!({"bulwark.io/hard-tenancy": "false"})));
    let example = load_docs("example/hard-tenancy-namespace.yaml");
    assert!(
        selector_matches(sel, &doc(&example, "Namespace")["metadata"]["labels"]),
        "the example namespace is selected"
    );
}

//! Who an event belongs to, from the shim's own state (never from the guest): the pod's
//! identity (the sandbox container's CRI annotations), the node, and the containers of this
//! sandbox by id (their CRI names and images). The guest only says which container id an
//! event is from; an id that is not a container of this sandbox is not believed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bulwark_protocol::limits::{MAX_TELEMETRY_IMAGE, MAX_TELEMETRY_NAME};
use bulwark_protocol::telemetry::{Enriched, Event};

/// CRI annotations the identity is read from.
const POD_NAME: &str = "io.kubernetes.cri.sandbox-name";
const POD_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const POD_UID: &str = "io.kubernetes.cri.sandbox-uid";
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// Most containers remembered per sandbox (ids of removed ones are forgotten first).
const MAX_CONTAINERS: usize = 1024;

/// The pod a sandbox runs, and the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub node: String,
    pub sandbox_id: String,
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: String,
}

impl PodIdentity {
    /// From the sandbox container's annotations (absent ones stay empty: a pod created
    /// through ctr has no CRI identity).
    pub fn from_annotations(node: &str, sandbox_id: &str, a: &HashMap<String, String>) -> Self {
        let get = |k: &str| bounded(a.get(k).map(String::as_str).unwrap_or(""), MAX_TELEMETRY_NAME);
        PodIdentity {
            node: bounded(node, MAX_TELEMETRY_NAME),
            sandbox_id: bounded(sandbox_id, MAX_TELEMETRY_NAME),
            pod_name: get(POD_NAME),
            namespace: get(POD_NAMESPACE),
            pod_uid: get(POD_UID),
        }
    }
}

/// One container of the sandbox, as the shim knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
}

impl ContainerInfo {
    /// From a container's annotations (its CRI name and image; else the id and nothing).
    pub fn from_annotations(id: &str, a: &HashMap<String, String>) -> Self {
        ContainerInfo {
            name: bounded(a.get(CONTAINER_NAME).map(String::as_str).unwrap_or(id), MAX_TELEMETRY_NAME),
            image: bounded(a.get(IMAGE_NAME).map(String::as_str).unwrap_or(""), MAX_TELEMETRY_IMAGE),
        }
    }
}

/// The sandbox's containers by id, bounded.
#[derive(Debug, Default)]
pub struct Directory {
    pub pod: PodIdentity,
    containers: BTreeMap<String, ContainerInfo>,
}

impl Directory {
    pub fn add(&mut self, id: &str, info: ContainerInfo) {
        if self.containers.len() >= MAX_CONTAINERS && !self.containers.contains_key(id) {
            // Containers are added and removed by the shim's own verbs; this only bounds a
            // pod that creates containers without end.
            if let Some(first) = self.containers.keys().next().cloned() {
                self.containers.remove(&first);
            }
        }
        self.containers.insert(id.to_string(), info);
    }

    pub fn remove(&mut self, id: &str) {
        self.containers.remove(id);
    }

    /// `event` with the pod's and its container's identity (pure). An event whose container
    /// id is not one of this sandbox's keeps an empty container id and name: the guest's
    /// claim is not passed on.
    pub fn enrich(&self, event: Event, drops: u64, host_ts_ns: u64) -> Enriched {
        let mut m = Enriched::new();
        let p = &self.pod;
        m.node_name = p.node.clone();
        m.sandbox_id = p.sandbox_id.clone();
        m.pod_name = p.pod_name.clone();
        m.pod_namespace = p.namespace.clone();
        m.pod_uid = p.pod_uid.clone();
        if let Some(c) = self.containers.get(&event.container_id) {
            m.container_id = event.container_id.clone();
            m.container_name = c.name.clone();
            m.image = c.image.clone();
        }
        m.drops = drops;
        m.host_ts_ns = host_ts_ns;
        m.event = Some(event).into();
        m
    }
}

/// The identity and containers of one sandbox, shared by the shim's verbs (which add and
/// remove containers) and its relay. Exists from the sandbox's creation, before the relay.
#[derive(Clone, Default)]
pub struct Identity(Arc<Mutex<Directory>>);

impl Identity {
    fn lock(&self) -> MutexGuard<'_, Directory> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod: `node`, the sandbox id and the sandbox container's annotations.
    pub fn set_pod(&self, node: &str, sandbox_id: &str, annotations: &HashMap<String, String>) {
        self.lock().pod = PodIdentity::from_annotations(node, sandbox_id, annotations);
    }

    /// A container of the sandbox (its CRI name and image from its annotations).
    pub fn add_container(&self, id: &str, annotations: &HashMap<String, String>) {
        self.lock().add(id, ContainerInfo::from_annotations(id, annotations));
    }

    pub fn remove_container(&self, id: &str) {
        self.lock().remove(id);
    }

    /// See [`Directory::enrich`].
    pub fn enrich(&self, event: Event, drops: u64, host_ts_ns: u64) -> Enriched {
        self.lock().enrich(event, drops, host_ts_ns)
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identity_comes_from_the_shim_and_unknown_containers_are_not_believed() {
        let pod = PodIdentity::from_annotations(
            "node-1",
            "sb1",
            &annotations(&[(POD_NAME, "web"), (POD_NAMESPACE, "team-a"), (POD_UID, "u-1")]),
        );
        let mut d = Directory { pod, ..Default::default() };
        d.add(
            "c1",
            ContainerInfo::from_annotations("c1", &annotations(&[(CONTAINER_NAME, "app"), (IMAGE_NAME, "busybox:1")])),
        );
        d.add("c2", ContainerInfo::from_annotations("c2", &HashMap::new()));

        let mut e = Event::new();
        e.container_id = "c1".into();
        let m = d.enrich(e.clone(), 3, 99);
        assert_eq!(
            (
                m.node_name.as_str(),
                m.sandbox_id.as_str(),
                m.pod_name.as_str(),
                m.pod_namespace.as_str(),
                m.pod_uid.as_str()
            ),
            ("node-1", "sb1", "web", "team-a", "u-1")
        );
        assert_eq!((m.container_id.as_str(), m.container_name.as_str(), m.image.as_str()), ("c1", "app", "busybox:1"));
        assert_eq!((m.drops, m.host_ts_ns), (3, 99));
        bulwark_protocol::telemetry::check_enriched(&m).unwrap();

        e.container_id = "c2".into();
        assert_eq!(d.enrich(e.clone(), 0, 0).container_name, "c2", "no CRI name: the id");
        // Another pod's container, or a made-up id: not passed on.
        e.container_id = "someone-elses".into();
        let m = d.enrich(e.clone(), 0, 0);
        assert_eq!((m.container_id.as_str(), m.container_name.as_str()), ("", ""));
        d.remove("c1");
        e.container_id = "c1".into();
        assert_eq!(d.enrich(e, 0, 0).container_id, "");
    }

    #[test]
    fn long_values_are_cut_to_the_limits() {
        let long = "é".repeat(300);
        let pod = PodIdentity::from_annotations(&long, "sb", &annotations(&[(POD_NAME, &long)]));
        assert!(pod.node.len() <= MAX_TELEMETRY_NAME && pod.pod_name.len() <= MAX_TELEMETRY_NAME);
        let c = ContainerInfo::from_annotations("c", &annotations(&[(IMAGE_NAME, &"x".repeat(5000))]));
        assert_eq!(c.image.len(), MAX_TELEMETRY_IMAGE);
    }

    #[test]
    fn the_directory_is_bounded() {
        let mut d = Directory::default();
        for i in 0..MAX_CONTAINERS + 10 {
            d.add(&format!("c{i}"), ContainerInfo::default());
        }
        assert_eq!(d.containers.len(), MAX_CONTAINERS);
    }
}

//! Falco plugin `bulwark`: the event source for syscalls made inside Bulwark's microVMs.
//!
//! - **source** (`bulwark`): listens on a node unix socket (init config `socket_path`, default
//!   [`DEFAULT_SOCKET`]) where each pod's shim sends `Enriched` frames
//!   (`bulwark_protocol::telemetry`); each checked frame becomes one plugin event whose payload
//!   is the raw protobuf message.
//! - **parse**: keeps a bounded process table per sandbox ((sandbox id, pid) keys), for the
//!   parent and ancestor fields.
//! - **extract**: Falco's usual field names ([`fields::FIELDS`]) plus `bulwark.*`.
//!
//! The payload is carried as raw bytes and decoded here ([`RawPayload`]), not through the
//! SDK's `JsonPayload`, whose decoding leaves the buffer unconsumed and fails on it.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Error;
use bulwark_protocol::telemetry::{decode_enriched, Enriched};
use falco_plugin::anyhow;
use falco_plugin::base::{Metric, MetricLabel, MetricType, MetricValue, Plugin};
use falco_plugin::event::events::{Event, EventMetadata};
use falco_plugin::event::fields::{FromBytes, FromBytesError, ToBytes};
use falco_plugin::event::{EventSource, PluginEvent};
use falco_plugin::extract::{field, ExtractFieldInfo, ExtractPlugin, ExtractRequest};
use falco_plugin::parse::{ParseInput, ParsePlugin};
use falco_plugin::source::{EventBatch, EventInput, SourcePlugin, SourcePluginInstance};
use falco_plugin::tables::TablesInput;
use falco_plugin::FailureReason;
use serde::Deserialize;

pub mod fields;
pub mod listener;
pub mod proctable;

use fields::Value;
use listener::{Counters, Queued};
use proctable::ProcTable;

/// Where the plugin listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bulwark/telemetry.sock";
/// The event source name rules use (`source: bulwark`).
pub const EVENT_SOURCE: &str = "bulwark";
/// Events handed to Falco per batch at most.
const BATCH: usize = 512;

/// The plugin's init config (JSON; empty means all defaults).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The node socket the shims connect to.
    pub socket_path: String,
    /// Shim connections open at once (one per pod).
    pub max_connections: usize,
    /// Checked frames waiting for Falco; more are dropped and counted.
    pub queue_events: usize,
    /// Processes remembered for parent/ancestor fields, all sandboxes together.
    pub max_processes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { socket_path: DEFAULT_SOCKET.into(), max_connections: 1024, queue_events: 65536, max_processes: 65536 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bulwark plugin config is not valid JSON for this plugin: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bulwark plugin config: {0} must be at least 1")]
    Zero(&'static str),
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = if text.trim().is_empty() { Config::default() } else { serde_json::from_str(text)? };
        for (v, name) in [
            (c.max_connections, "max_connections"),
            (c.queue_events, "queue_events"),
            (c.max_processes, "max_processes"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(c)
    }
}

/// The event payload: the raw `Enriched` message. Decoding takes all the bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawPayload<'a>(pub &'a [u8]);

impl EventSource for RawPayload<'_> {
    const SOURCE: Option<&'static str> = Some(EVENT_SOURCE);
}

impl<'a> FromBytes<'a> for RawPayload<'a> {
    fn from_bytes(buf: &mut &'a [u8]) -> Result<Self, FromBytesError> {
        let all = *buf;
        *buf = &[];
        Ok(RawPayload(all))
    }
}

impl ToBytes for RawPayload<'_> {
    fn binary_size(&self) -> usize {
        self.0.len()
    }
    fn write<W: Write>(&self, mut writer: W) -> std::io::Result<()> {
        writer.write_all(self.0)
    }
    fn default_repr() -> impl ToBytes {
        &[] as &[u8]
    }
}

pub type BulwarkEvent<'a> = Event<PluginEvent<RawPayload<'a>>>;

pub struct BulwarkPlugin {
    config: Config,
    counters: Arc<Counters>,
    procs: ProcTable,
    /// The last decoded event (event number, message), shared by parse and extract.
    current: Option<(usize, Enriched)>,
    decode_errors: u64,
}

impl Plugin for BulwarkPlugin {
    const NAME: &'static CStr = c"bulwark";
    const PLUGIN_VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr = c"Syscalls from inside Bulwark microVMs, with pod identity";
    const CONTACT: &'static CStr = c"https://github.com/bulwark";
    type ConfigType = String;

    fn new(_input: Option<&TablesInput>, config: Self::ConfigType) -> Result<Self, Error> {
        let config = Config::parse(&config)?;
        Ok(BulwarkPlugin {
            procs: ProcTable::new(config.max_processes),
            config,
            counters: Arc::new(Counters::default()),
            current: None,
            decode_errors: 0,
        })
    }

    fn set_config(&mut self, config: Self::ConfigType) -> Result<(), Error> {
        let new = Config::parse(&config)?;
        if new.socket_path != self.config.socket_path {
            log::warn!("bulwark: socket_path changes take effect at the next open");
        }
        self.config = new;
        Ok(())
    }

    fn get_metrics(&mut self) -> impl IntoIterator<Item = Metric> {
        let c = &self.counters;
        let m = |name: &'static CStr, kind, v: u64| Metric::new(MetricLabel::new(name, kind), MetricValue::U64(v));
        [
            m(c"frames", MetricType::Monotonic, c.frames.load(Ordering::Relaxed)),
            m(c"garbage_frames", MetricType::Monotonic, c.garbage.load(Ordering::Relaxed)),
            m(c"queue_drops", MetricType::Monotonic, c.queue_drops.load(Ordering::Relaxed)),
            m(c"oversize_frames", MetricType::Monotonic, c.oversize.load(Ordering::Relaxed)),
            m(c"truncated_streams", MetricType::Monotonic, c.truncated.load(Ordering::Relaxed)),
            m(c"connections", MetricType::Monotonic, c.connections.load(Ordering::Relaxed)),
            m(c"refused_connections", MetricType::Monotonic, c.refused_connections.load(Ordering::Relaxed)),
            m(c"open_connections", MetricType::NonMonotonic, c.open_connections.load(Ordering::Relaxed) as u64),
            m(c"processes", MetricType::NonMonotonic, self.procs.len() as u64),
            m(c"decode_errors", MetricType::Monotonic, self.decode_errors),
        ]
    }
}

/// One open capture: the listener's threads and the queue they fill.
pub struct BulwarkInstance {
    queue: Receiver<Queued>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Drop for BulwarkInstance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl SourcePluginInstance for BulwarkInstance {
    type Plugin = BulwarkPlugin;

    fn next_batch(&mut self, _plugin: &mut BulwarkPlugin, batch: &mut EventBatch) -> Result<(), Error> {
        let first = match self.queue.recv_timeout(Duration::from_millis(50)) {
            Ok(q) => q,
            Err(RecvTimeoutError::Timeout) => return Err(anyhow::anyhow!("no event").context(FailureReason::Timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(anyhow::anyhow!("listener stopped").context(FailureReason::Eof))
            }
        };
        let mut next = Some(first);
        let mut n = 0;
        while let Some((ts, bytes)) = next.take() {
            let event = Event {
                metadata: EventMetadata { ts, tid: -1 },
                params: PluginEvent { plugin_id: BulwarkPlugin::PLUGIN_ID, event_data: RawPayload(&bytes) },
            };
            batch.add(event)?;
            n += 1;
            if n < BATCH {
                next = self.queue.try_recv().ok();
            }
        }
        Ok(())
    }
}

impl SourcePlugin for BulwarkPlugin {
    type Instance = BulwarkInstance;
    const EVENT_SOURCE: &'static CStr = c"bulwark";
    /// 999: the id the plugin registry leaves for plugins in development.
    const PLUGIN_ID: u32 = 999;
    type Event<'a> = BulwarkEvent<'a>;

    fn open(&mut self, _params: Option<&str>) -> Result<BulwarkInstance, Error> {
        let path = std::path::PathBuf::from(&self.config.socket_path);
        let listener = listener::bind(&path)?;
        let (tx, rx) = sync_channel(self.config.queue_events);
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor =
            listener::spawn_acceptor(listener, tx, self.counters.clone(), stop.clone(), self.config.max_connections)?;
        log::info!("bulwark: listening on {}", path.display());
        Ok(BulwarkInstance { queue: rx, stop, acceptor: Some(acceptor) })
    }

    fn close(&mut self, instance: &mut BulwarkInstance) {
        instance.stop.store(true, Ordering::Relaxed);
    }

    fn event_to_string(&mut self, event: &EventInput<BulwarkEvent>) -> Result<CString, Error> {
        let ev = event.event()?;
        let m = decode_enriched(ev.params.event_data.0)?;
        let e = m.event.as_ref();
        let ty = e.and_then(|e| e.type_.enum_value().ok()).map(fields::type_name).unwrap_or("unknown");
        let text = format!(
            "{ty} pid={} comm={} sandbox={} pod={}/{}",
            e.map_or(0, |e| e.pid),
            e.map_or("", |e| e.comm.as_str()),
            m.sandbox_id,
            m.pod_namespace,
            m.pod_name
        );
        Ok(CString::new(text.replace('\0', "?"))?)
    }
}

impl BulwarkPlugin {
    /// The event's message, decoded once per event number.
    fn decoded(&mut self, input: &EventInput<BulwarkEvent>) -> Result<&Enriched, Error> {
        let num = input.event_number();
        if self.current.as_ref().map(|c| c.0) != Some(num) {
            let ev = input.event()?;
            match decode_enriched(ev.params.event_data.0) {
                Ok(m) => self.current = Some((num, m)),
                Err(e) => {
                    self.decode_errors += 1;
                    self.current = None;
                    return Err(e.into());
                }
            }
        }
        match &self.current {
            Some((_, m)) => Ok(m),
            None => Err(anyhow::anyhow!("no event")),
        }
    }

    fn value(&mut self, input: &EventInput<BulwarkEvent>, name: &str, arg: Option<u64>) -> Result<Value, Error> {
        self.decoded(input)?;
        match &self.current {
            Some((_, m)) => Ok(fields::extract(name, arg, m, &self.procs)),
            None => Ok(Value::None),
        }
    }

    fn str_field(&mut self, req: ExtractRequest<Self>, name: &str, arg: Option<u64>) -> Result<Option<CString>, Error> {
        Ok(match self.value(req.event, name, arg)? {
            Value::Str(s) => Some(CString::new(s.replace('\0', "?"))?),
            _ => None,
        })
    }

    fn u64_field(&mut self, req: ExtractRequest<Self>, name: &str) -> Result<Option<u64>, Error> {
        Ok(match self.value(req.event, name, None)? {
            Value::U64(v) => Some(v),
            _ => None,
        })
    }

    fn bool_field(&mut self, req: ExtractRequest<Self>, name: &str) -> Result<Option<bool>, Error> {
        Ok(match self.value(req.event, name, None)? {
            Value::Bool(v) => Some(v),
            _ => None,
        })
    }

    fn ip_field(&mut self, req: ExtractRequest<Self>, name: &str) -> Result<Option<IpAddr>, Error> {
        Ok(match self.value(req.event, name, None)? {
            Value::Ip(v) => Some(v),
            _ => None,
        })
    }

    fn net_field(&mut self, req: ExtractRequest<Self>, name: &str) -> Result<Option<falco_event::types::IpNet>, Error> {
        Ok(match self.value(req.event, name, None)? {
            Value::Net(v) => Some(falco_event::types::IpNet(v)),
            _ => None,
        })
    }

    fn aname(&mut self, req: ExtractRequest<Self>, n: u64) -> Result<Option<CString>, Error> {
        self.str_field(req, "proc.aname", Some(n))
    }
}

impl ParsePlugin for BulwarkPlugin {
    type Event<'a> = BulwarkEvent<'a>;

    fn parse_event(&mut self, event: &EventInput<BulwarkEvent>, _input: &ParseInput) -> anyhow::Result<()> {
        // A frame that does not decode was counted by the listener; skip it here too.
        if self.decoded(event).is_err() {
            return Ok(());
        }
        if let Some((_, m)) = &self.current {
            self.procs.observe(m);
        }
        Ok(())
    }
}

/// Generates one extractor method per field and the plugin's field table.
macro_rules! bulwark_fields {
    ($( $kind:ident $method:ident $name:literal ),* $(,)?) => {
        impl BulwarkPlugin {
            $( bulwark_fields!(@method $kind $method $name); )*
        }
        impl ExtractPlugin for BulwarkPlugin {
            type Event<'a> = BulwarkEvent<'a>;
            type ExtractContext = ();
            const EXTRACT_FIELDS: &'static [ExtractFieldInfo<Self>] = &[
                $( field($name, &Self::$method), )*
                field("proc.aname", &Self::aname),
            ];
        }
        /// The names of the fields the plugin extracts (the indexed `proc.aname` last).
        pub const EXTRACTED: &[&str] = &[$( $name, )* "proc.aname"];
    };
    (@method str $method:ident $name:literal) => {
        fn $method(&mut self, req: ExtractRequest<Self>) -> Result<Option<CString>, Error> { self.str_field(req, $name, None) }
    };
    (@method u64 $method:ident $name:literal) => {
        fn $method(&mut self, req: ExtractRequest<Self>) -> Result<Option<u64>, Error> { self.u64_field(req, $name) }
    };
    (@method bool $method:ident $name:literal) => {
        fn $method(&mut self, req: ExtractRequest<Self>) -> Result<Option<bool>, Error> { self.bool_field(req, $name) }
    };
    (@method ip $method:ident $name:literal) => {
        fn $method(&mut self, req: ExtractRequest<Self>) -> Result<Option<IpAddr>, Error> { self.ip_field(req, $name) }
    };
    (@method net $method:ident $name:literal) => {
        fn $method(&mut self, req: ExtractRequest<Self>) -> Result<Option<falco_event::types::IpNet>, Error> { self.net_field(req, $name) }
    };
}

bulwark_fields! {
    str evt_type "evt.type",
    str evt_res "evt.res",
    u64 evt_rawres "evt.rawres",
    bool evt_failed "evt.failed",
    str evt_arg_flags "evt.arg.flags",
    str evt_arg_mode "evt.arg.mode",
    str evt_arg_request "evt.arg.request",
    str evt_arg_name "evt.arg.name",
    str evt_arg_path "evt.arg.path",
    str evt_arg_newpath "evt.arg.newpath",
    bool evt_is_open_read "evt.is_open_read",
    bool evt_is_open_write "evt.is_open_write",
    str proc_name "proc.name",
    str proc_exe "proc.exe",
    str proc_exepath "proc.exepath",
    str proc_args "proc.args",
    str proc_cmdline "proc.cmdline",
    str proc_cwd "proc.cwd",
    u64 proc_pid "proc.pid",
    u64 proc_ppid "proc.ppid",
    str proc_pname "proc.pname",
    str proc_pexepath "proc.pexepath",
    str proc_pcmdline "proc.pcmdline",
    u64 proc_tty "proc.tty",
    bool proc_is_exe_from_memfd "proc.is_exe_from_memfd",
    bool proc_is_exe_upper_layer "proc.is_exe_upper_layer",
    u64 thread_tid "thread.tid",
    str thread_cap_effective "thread.cap_effective",
    str thread_cap_permitted "thread.cap_permitted",
    u64 user_uid "user.uid",
    str user_name "user.name",
    u64 user_loginuid "user.loginuid",
    u64 group_gid "group.gid",
    u64 fd_num "fd.num",
    str fd_type "fd.type",
    str fd_typechar "fd.typechar",
    str fd_name "fd.name",
    str fd_directory "fd.directory",
    str fd_filename "fd.filename",
    str fd_l4proto "fd.l4proto",
    ip fd_sip "fd.sip",
    u64 fd_sport "fd.sport",
    ip fd_cip "fd.cip",
    u64 fd_cport "fd.cport",
    ip fd_lip "fd.lip",
    u64 fd_lport "fd.lport",
    ip fd_rip "fd.rip",
    u64 fd_rport "fd.rport",
    net fd_snet "fd.snet",
    net fd_rnet "fd.rnet",
    str container_id "container.id",
    str container_name "container.name",
    str container_image "container.image",
    str container_image_repository "container.image.repository",
    str container_image_tag "container.image.tag",
    str k8s_ns_name "k8s.ns.name",
    str k8s_pod_name "k8s.pod.name",
    str k8s_pod_uid "k8s.pod.uid",
    str bulwark_sandbox_id "bulwark.sandbox_id",
    str bulwark_vm "bulwark.vm",
    str bulwark_node "bulwark.node",
    u64 bulwark_drops "bulwark.drops",
}

// The shared object Falco loads exports the plugin API symbols; unit tests link a static
// plugin API instead (the two cannot coexist in one build).
#[cfg(not(test))]
mod exported {
    use super::BulwarkPlugin;
    use falco_plugin::{extract_plugin, parse_plugin, plugin, source_plugin};
    plugin!(BulwarkPlugin);
    source_plugin!(BulwarkPlugin);
    parse_plugin!(BulwarkPlugin);
    extract_plugin!(BulwarkPlugin);
}

#[cfg(test)]
use falco_plugin::static_plugin;
#[cfg(test)]
static_plugin!(pub BULWARK_PLUGIN_API = BulwarkPlugin);

#[cfg(test)]
mod tests;

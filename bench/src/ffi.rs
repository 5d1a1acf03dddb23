//! The part of include/axalloc.h the benchmark uses, declared by hand (the
//! benchmark links the shipped archive, as a C program does).

use core::ffi::{c_char, c_void};

pub const OK: i32 = 0;
pub const ERR_NOT_MAPPED: i32 = -4;

pub const READ: u32 = 1 << 0;
pub const WRITE: u32 = 1 << 1;
pub const EXEC: u32 = 1 << 2;

pub const FORMAT_X86_EPT: u32 = 1;
/// `axalloc_dirty_log_get` / `axalloc_young_get`: get-and-re-arm.
pub const BITMAP_CLEAR: u32 = 1 << 16;
pub const CFG_FRAMES_ZEROED: u32 = 1 << 8;
pub const CFG_LINEAR_MAP: u32 = 1 << 13;

#[repr(C)]
pub struct Config {
    pub struct_size: u32,
    pub format: u32,
    pub flags: u32,
    pub reserved: u32,
    pub base: u64,
    pub size: u64,
    pub linear_offset: u64,
}

#[repr(C)]
pub struct Hooks {
    pub struct_size: u32,
    pub reserved: u32,
    pub ctx: *mut c_void,
    pub alloc_frame: Option<unsafe extern "C" fn(*mut c_void, *mut u64) -> i32>,
    pub free_frame: Option<unsafe extern "C" fn(*mut c_void, u64)>,
    pub phys_to_virt: Option<unsafe extern "C" fn(*mut c_void, u64) -> *mut c_void>,
    pub flush_tlb: Option<unsafe extern "C" fn(*mut c_void, u64, u64)>,
    pub alloc_contig: Option<unsafe extern "C" fn(*mut c_void, u32, *mut u64) -> i32>,
    pub free_contig: Option<unsafe extern "C" fn(*mut c_void, u64, u32)>,
    pub relax: Option<unsafe extern "C" fn(*mut c_void)>,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub regions: u64,
    pub mapped_bytes: u64,
    pub guest_frames: u64,
    pub table_frames: u64,
    pub faults: u64,
    pub reserve_frames: u64,
}

#[repr(C)]
pub struct As {
    _opaque: [u8; 0],
}

extern "C" {
    pub fn axalloc_status_str(status: i32) -> *const c_char;
    pub fn axalloc_as_create(cfg: *const Config, hooks: *const Hooks, out: *mut *mut As) -> i32;
    pub fn axalloc_as_destroy(a: *mut As);
    pub fn axalloc_as_root(a: *const As) -> u64;
    pub fn axalloc_as_stats(a: *const As, out: *mut Stats) -> i32;
    pub fn axalloc_map_alloc(a: *mut As, gpa: u64, size: u64, flags: u32, populate: bool) -> i32;
    pub fn axalloc_map_linear(a: *mut As, gpa: u64, hpa: u64, size: u64, flags: u32) -> i32;
    pub fn axalloc_unmap(a: *mut As, gpa: u64, size: u64) -> i32;
    pub fn axalloc_handle_fault(a: *mut As, gpa: u64, access: u32) -> i32;
    pub fn axalloc_translate(a: *const As, gpa: u64, hpa_out: *mut u64, size_out: *mut u64) -> i32;
    pub fn axalloc_reserve(a: *mut As, frames: u64) -> i32;
    pub fn axalloc_dirty_log_start(a: *mut As, gpa: u64, size: u64) -> i32;
    pub fn axalloc_dirty_log_stop(a: *mut As, gpa: u64, size: u64) -> i32;
    pub fn axalloc_dirty_log_get(a: *mut As, gpa: u64, size: u64, bitmap: *mut u64, flags: u32) -> i32;
    pub fn axalloc_present_bitmap(a: *const As, gpa: u64, size: u64, bitmap: *mut u64) -> i32;
    pub fn axalloc_translate_many(a: *const As, gpas: *const u64, hpas: *mut u64, page_sizes: *mut u64, n: usize) -> i32;
}

pub fn status_str(rc: i32) -> String {
    // SAFETY: the library returns a static NUL-terminated string, never NULL.
    unsafe { std::ffi::CStr::from_ptr(axalloc_status_str(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// Panics with the status name unless `rc == OK`.
#[track_caller]
pub fn ok(rc: i32, what: &str) {
    if rc != OK {
        panic!("{what}: {} ({rc})", status_str(rc));
    }
}

/// A live libaxalloc address space (destroyed on drop).
pub struct Space(pub *mut As);

unsafe impl Send for Space {}
unsafe impl Sync for Space {}

impl Space {
    pub fn create(hooks: &Hooks, flags: u32, base: u64, size: u64) -> Space {
        Space::create_linear(hooks, flags, base, size, 0)
    }
    /// With `CFG_LINEAR_MAP` in `flags`: `linear_offset` = hva - hpa.
    pub fn create_linear(hooks: &Hooks, flags: u32, base: u64, size: u64, linear_offset: u64) -> Space {
        let cfg = Config {
            struct_size: core::mem::size_of::<Config>() as u32,
            format: FORMAT_X86_EPT,
            flags,
            reserved: 0,
            base,
            size,
            linear_offset,
        };
        let mut p = core::ptr::null_mut();
        // SAFETY: valid pointers; the hooks honour the header's contract.
        ok(unsafe { axalloc_as_create(&cfg, hooks, &mut p) }, "axalloc_as_create");
        Space(p)
    }
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: live handle.
        ok(unsafe { axalloc_as_stats(self.0, &mut s) }, "axalloc_as_stats");
        s
    }
    pub fn root(&self) -> u64 {
        // SAFETY: live handle.
        unsafe { axalloc_as_root(self.0) }
    }
    #[inline(always)]
    pub fn translate(&self, gpa: u64) -> Option<u64> {
        let mut hpa = 0;
        // SAFETY: live handle; out pointer valid, size pointer NULL.
        match unsafe { axalloc_translate(self.0, gpa, &mut hpa, core::ptr::null_mut()) } {
            OK => Some(hpa),
            _ => None,
        }
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        // SAFETY: live handle, no other call in progress.
        unsafe { axalloc_as_destroy(self.0) }
    }
}

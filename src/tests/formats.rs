//! Arm stage-2 and RISC-V G-stage entries bit by bit against the manuals
//! (sections cited in `format/arm.rs` and `format/riscv.rs`), the table
//! shapes `gpa_bits` selects, and the hardware register values.

use page_table_multiarch::{GenericPTE, MappingFlags};

use crate::addr::Hpa;
use crate::format::{self, Entry, Family, Format, FormatKind, arm, riscv};

type Arm3 = arm::ArmS2<3, 1>;
type Sv39 = riscv::Sv39x4;

const R: MappingFlags = MappingFlags::READ;
const W: MappingFlags = MappingFlags::WRITE;
const X: MappingFlags = MappingFlags::EXECUTE;
const DEV: MappingFlags = MappingFlags::DEVICE;

fn at(a: usize) -> Hpa {
    Hpa::from_usize(a)
}

/// Leaves, tables, parking and splits round-trip for `F`, up to frames
/// below `limit`.
fn roundtrip<F: Format>(limit: usize) {
    for level in 0..=F::MAX_LEAF_LEVEL {
        let hpa = at(limit - format::level_size(level));
        for owned in [false, true] {
            let raw = format::leaf::<F>(hpa, R | W, level, owned);
            assert_eq!(
                format::decode::<F>(raw, level),
                Entry::Leaf { hpa, owned },
                "level {level}"
            );
            let parked = F::park(raw);
            assert!(!F::from_raw(parked).is_present());
            assert_eq!(format::decode::<F>(parked, level), Entry::Parked);
            assert_eq!(F::unpark(parked), raw);
            if level > 0 {
                // Child 3 of a split maps the 4th piece, as a leaf one level
                // down with the same rights.
                let c = F::child(raw, level, 3);
                let want = at(hpa.as_usize() + 3 * format::level_size(level - 1));
                assert_eq!(
                    format::decode::<F>(c, level - 1),
                    Entry::Leaf { hpa: want, owned }
                );
                assert_eq!(format::leaf_flags::<F>(c), format::leaf_flags::<F>(raw));
            }
        }
    }
    let t = format::table::<F>(at(limit - 4096));
    assert_eq!(format::decode::<F>(t, 1), Entry::Table(at(limit - 4096)));
    assert_eq!(F::next_table(t), Some(limit - 4096));
    assert_eq!(F::unpark(F::park(t)), t);
    assert_eq!(format::decode::<F>(F::EMPTY, 0), Entry::Empty);
    let zero = format::leaf::<F>(at(0), R, 0, true);
    assert_ne!(format::decode::<F>(zero, 0), Entry::Empty);
    assert!(F::is_parked(F::park(zero)));
}

#[test]
fn arm_s2_entries_roundtrip_and_park_invalid() {
    roundtrip::<Arm3>(1 << 48);
    roundtrip::<arm::ArmS2<2, 2>>(1 << 48);
    roundtrip::<arm::ArmS2<4, 0>>(1 << 48);
}

#[test]
fn riscv_entries_roundtrip_and_park_invalid() {
    // 44-bit PPN: 56-bit physical addresses.
    roundtrip::<riscv::Sv39x4>(1 << 56);
    roundtrip::<riscv::Sv48x4>(1 << 56);
    roundtrip::<riscv::Sv57x4>(1 << 56);
}

#[test]
fn arm_s2_leaf_bits_follow_the_arm_arm() {
    // Arm ARM "VMSAv8-64 translation table format descriptors" and "Stage 2
    // memory region attributes": page descriptor (0b11) | MemAttr 0b1111
    // (5:2) | S2AP 0b11 (7:6) | SH 0b11 (9:8) | AF (10); XN[1:0] = 0b10
    // (bit 54) without EXEC; bit 55 software (owned).
    let page = format::leaf::<Arm3>(at(0x1234_5000), R | W, 0, true);
    assert_eq!(page, 0x00c0_0000_1234_57ff);
    let rx = format::leaf::<Arm3>(at(0x1234_5000), R | X, 0, false);
    // S2AP 0b01 read-only, executable (XN 0b00).
    assert_eq!(rx, 0x0000_0000_1234_577f);
    // Device-nGnRE: MemAttr 0b0001.
    let dev = format::leaf::<Arm3>(at(0x900_0000), R | W | DEV, 0, false);
    assert_eq!(dev, 0x0040_0000_0900_07c7);
    assert!(format::leaf_flags::<Arm3>(dev).contains(DEV));
    assert!(!format::leaf_flags::<Arm3>(page).contains(DEV));
    // Block descriptors (0b01) at Arm levels 2 (2 MiB) and 1 (1 GiB).
    let block = format::leaf::<Arm3>(at(0x4020_0000), R, 1, false);
    assert_eq!(block, 0x0040_0000_4020_077d);
    assert_eq!(format::leaf::<Arm3>(at(0x4000_0000), R, 2, false) & 3, 0b01);
    // Table descriptors: the address and 0b11, nothing else at stage 2.
    assert_eq!(format::table::<Arm3>(at(0x8_7654_3000)), 0x8_7654_3003);
    // A split of a 2 MiB block gives pages (0b11), of a 1 GiB block blocks.
    assert_eq!(Arm3::child(block, 1, 1), 0x0040_0000_4020_177f);
    let g = format::leaf::<Arm3>(at(0x4000_0000), R, 2, false);
    assert_eq!(Arm3::child(g, 2, 1) & 3, 0b01);
    // Invalid (parked) descriptors have bit 0 clear.
    assert_eq!(Arm3::park(page) & 1, 0);
    assert_eq!(Arm3::EMPTY, 0);
}

#[test]
fn arm_s2_blocks_never_at_level_0_of_the_arm_arm() {
    // 4 KiB granule: blocks at Arm levels 1 and 2 only; with two lookup
    // levels the root is Arm level 2 (2 MiB blocks).
    assert_eq!(<arm::ArmS2<4, 0> as Format>::MAX_LEAF_LEVEL, 2);
    assert_eq!(<arm::ArmS2<3, 0> as Format>::MAX_LEAF_LEVEL, 2);
    assert_eq!(<arm::ArmS2<2, 4> as Format>::MAX_LEAF_LEVEL, 1);
}

#[test]
fn riscv_leaf_bits_follow_the_privileged_spec() {
    // Hypervisor extension, "Guest Physical Address Translation": leaves
    // U = 1; A = 1, D = 1 when writable; PPN = pa >> 12 at bits 53:10;
    // owned marker in RSW (bit 8).
    let rw = format::leaf::<Sv39>(at(0x8020_3000), R | W, 0, true);
    assert_eq!(rw, 0x2008_0c00 | 0xd7 | 0x100);
    let rx = format::leaf::<Sv39>(at(0x8020_3000), R | X, 0, false);
    assert_eq!(rx, 0x2008_0c00 | 0x5b);
    // Non-leaf: V only (R = W = X = 0, A = D = U = 0).
    let t = format::table::<Sv39>(at(0x8020_3000));
    assert_eq!(t, 0x2008_0c01);
    // Svpbmt: PBMT (62:61) = IO (2) for DEVICE; the space passes DEVICE only
    // with AXALLOC_CFG_RISCV_SVPBMT.
    let io = format::leaf::<Sv39>(at(0x1000_0000), R | W | DEV, 0, false);
    assert_eq!(io >> 61, 2);
    assert_eq!(
        io & !(3 << 61),
        format::leaf::<Sv39>(at(0x1000_0000), R | W, 0, false)
    );
    // Megapages and gigapages have the same leaf bits.
    assert_eq!(
        format::leaf::<Sv39>(at(0x8020_0000), R | W, 1, false),
        0x2008_0000 | 0xd7
    );
    // A split keeps every bit but the PPN.
    let mega = format::leaf::<Sv39>(at(0x8020_0000), R | W, 1, true);
    assert_eq!(Sv39::child(mega, 1, 3), 0x2008_0c00 | 0xd7 | 0x100);
    assert_eq!(Sv39::park(rw) & 1, 0);
}

#[test]
fn gpa_bits_choose_levels_and_root_pages_as_kvm_does() {
    // Arm: the fewest levels with up to 16 concatenated root tables
    // (Linux `stage2_pgtable_levels`); RISC-V: the mode's width, 16 KiB root.
    let cases: &[(Family, u32, u32, usize, u32)] = &[
        (Family::ArmS2, 0, 40, 3, 2),
        (Family::ArmS2, 32, 32, 2, 4),
        (Family::ArmS2, 34, 34, 2, 16),
        (Family::ArmS2, 35, 35, 3, 1),
        (Family::ArmS2, 39, 39, 3, 1),
        (Family::ArmS2, 40, 40, 3, 2),
        (Family::ArmS2, 42, 42, 3, 8),
        (Family::ArmS2, 43, 43, 3, 16),
        (Family::ArmS2, 44, 44, 4, 1),
        (Family::ArmS2, 48, 48, 4, 1),
        (Family::Ept, 0, 48, 4, 1),
        (Family::Ept, 57, 57, 5, 1),
        (Family::Npt, 48, 48, 4, 1),
        (Family::Npt, 57, 57, 5, 1),
        (Family::Sv39x4, 0, 41, 3, 4),
        (Family::Sv48x4, 50, 50, 4, 4),
        (Family::Sv57x4, 0, 59, 5, 4),
    ];
    for &(family, asked, bits, levels, pages) in cases {
        let (kind, got) = FormatKind::choose(family, asked).unwrap();
        assert_eq!(
            (got, kind.levels(), 1u32 << kind.root_order()),
            (bits, levels, pages),
            "{family:?} {asked}"
        );
        assert!(kind.max_gpa_bits() >= got);
        assert_eq!(kind.family(), family);
    }
    for (family, bad) in [
        (Family::ArmS2, 31),
        (Family::ArmS2, 49),
        (Family::Ept, 47),
        (Family::Ept, 52),
        (Family::Npt, 39),
        (Family::Sv39x4, 39),
        (Family::Sv48x4, 41),
        (Family::Sv57x4, 57),
    ] {
        assert!(FormatKind::choose(family, bad).is_err(), "{family:?} {bad}");
    }
}

#[test]
fn hw_register_values_follow_the_manuals() {
    let root = Hpa::from_u64(0x8000_4000);
    // EPTP: WB (6) | walk length - 1 at 5:3 | A/D enable (bit 6).
    let (k, b) = FormatKind::choose(Family::Ept, 0).unwrap();
    assert_eq!(k.hw(root, b).root_pointer, 0x8000_405e);
    let (k, b) = FormatKind::choose(Family::Ept, 57).unwrap();
    assert_eq!(k.hw(root, b).root_pointer, 0x8000_4066);
    let (k, b) = FormatKind::choose(Family::Npt, 57).unwrap();
    assert_eq!(k.hw(root, b).root_pointer, 0x8000_4000);
    // hgatp: MODE 8/9/10 at 63:60, VMID 0, PPN.
    for (family, mode) in [
        (Family::Sv39x4, 8u64),
        (Family::Sv48x4, 9),
        (Family::Sv57x4, 10),
    ] {
        let (k, b) = FormatKind::choose(family, 0).unwrap();
        let hw = k.hw(root, b);
        assert_eq!(hw.root_pointer, mode << 60 | 0x8_0004);
        assert_eq!((hw.root_pages, hw.vtcr), (4, 0));
    }
    // VTCR_EL2: T0SZ 64 - bits, SL0 (0 level 2, 1 level 1, 2 level 0),
    // IRGN0 = ORGN0 = 0b01, SH0 = 0b11, TG0 = 0b00 (4 KiB).
    for (bits, vtcr, levels) in [(40, 0x3558, 3), (32, 0x3520, 2), (48, 0x3590, 4)] {
        let (k, b) = FormatKind::choose(Family::ArmS2, bits).unwrap();
        let hw = k.hw(root, b);
        assert_eq!(
            (hw.vtcr, hw.levels, hw.root_pointer),
            (vtcr, levels, 0x8000_4000)
        );
    }
}

#[test]
fn arm_s2fwb_normal_memory_is_memattr_0110() {
    // Arm ARM, stage 2 attributes with FEAT_S2FWB (HCR_EL2.FWB = 1):
    // MemAttr 0b0110 forces Normal write-back; Device-nGnRE stays 0b0001.
    let fwb = format::leaf::<Arm3>(at(0x1234_5000), R | W | arm::FWB, 0, true);
    assert_eq!((fwb >> 2) & 0xf, 0b0110);
    assert_eq!(
        fwb & !(0xf << 2),
        format::leaf::<Arm3>(at(0x1234_5000), R | W, 0, true) & !(0xf << 2)
    );
    assert!(!format::leaf_flags::<Arm3>(fwb).contains(DEV));
    let dev = format::leaf::<Arm3>(at(0x900_0000), R | W | DEV | arm::FWB, 0, false);
    assert_eq!((dev >> 2) & 0xf, 0b0001);
    // A split keeps the encoding.
    let block = format::leaf::<Arm3>(at(0x4020_0000), R | arm::FWB, 1, false);
    assert_eq!((Arm3::child(block, 1, 7) >> 2) & 0xf, 0b0110);
}

#[test]
fn arm_s2fwb_reaches_every_leaf_of_the_space() {
    use crate::flags::{Access, Flags};
    use crate::space::{AddrSpace, Config};
    let pool = super::pool::Pool::new(64);
    for fwb in [false, true] {
        let config = Config {
            format: FormatKind::ArmL3R1,
            gpa_bits: 40,
            frames_zeroed: false,
            no_huge_1g: false,
            svpbmt: false,
            s2fwb: fwb,
            base: crate::addr::Gpa::from_u64(0),
            size: 1 << 32,
        };
        let sp = AddrSpace::create(config, *pool.hooks()).unwrap();
        // SAFETY: alive until destroyed below.
        let s = unsafe { sp.as_ref() };
        let rw = Flags::from_bits(3).unwrap();
        s.map_alloc(0, 0x2000, rw, false).unwrap();
        s.handle_fault(0, Access::from_bits(2).unwrap()).unwrap();
        s.map_alloc(0x20_0000, 0x1000, rw, true).unwrap();
        s.map_linear(0x4000_0000, 0x8000_0000, 0x20_0000, Flags::READ)
            .unwrap();
        let want = if fwb { 0b0110 } else { 0b1111 };
        for g in [0u64, 0x20_0000, 0x4000_0000] {
            let (raw, _) = s
                .test_walker::<arm::ArmS2<3, 1>>()
                .lookup(crate::addr::Gpa::from_u64(g))
                .unwrap()
                .unwrap();
            assert_eq!((raw >> 2) & 0xf, want, "fwb {fwb} gpa {g:#x}");
        }
        pool.destroy(sp);
    }
    assert_eq!(pool.in_use(), 0);
}

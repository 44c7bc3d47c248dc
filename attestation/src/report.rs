//! The AMD SEV-SNP attestation report layout (1184 bytes, all integers little-endian).
//!
//! Owns [`Report`] (reading the fields of a received report, keeping its raw bytes), [`Tcb`] and
//! [`ReportBuilder`] (writing the same layout, for the simulated platform). It must never decide
//! whether a report is acceptable: parsing only reads bytes; `verify` and `claims` judge them.
//! The signature is always checked over the raw bytes as received, never over a re-encoding.

use crate::error::AttestationError;
use crate::reference::Product;

/// Length of a report (versions 2 to 5).
pub const REPORT_LEN: usize = 1184;
/// Length of the signed part: the signature covers `raw[..SIGNED_LEN]`.
pub const SIGNED_LEN: usize = 0x2A0;

const OFF_VERSION: usize = 0x00;
const OFF_GUEST_SVN: usize = 0x04;
const OFF_POLICY: usize = 0x08;
const OFF_VMPL: usize = 0x30;
const OFF_SIG_ALGO: usize = 0x34;
const OFF_CURRENT_TCB: usize = 0x38;
const OFF_KEY_INFO: usize = 0x48;
const OFF_REPORT_DATA: usize = 0x50;
const OFF_MEASUREMENT: usize = 0x90;
const OFF_HOST_DATA: usize = 0xC0;
const OFF_REPORTED_TCB: usize = 0x180;
const OFF_CPUID_FAMILY: usize = 0x188;
const OFF_CPUID_MODEL: usize = 0x189;
const OFF_CPUID_STEPPING: usize = 0x18A;
const OFF_CHIP_ID: usize = 0x1A0;
/// Offset of the signature's `r` component (72 bytes, little-endian, zero-padded).
pub(crate) const OFF_SIG_R: usize = 0x2A0;
/// Offset of the signature's `s` component (72 bytes, little-endian, zero-padded).
pub(crate) const OFF_SIG_S: usize = 0x2E8;
/// Length of each signature component field.
pub(crate) const SIG_COMPONENT_LEN: usize = 72;
/// Offset of the reserved rest of the 512-byte signature field, after `r` and `s`.
const OFF_SIG_RESERVED: usize = 0x330;

/// Guest policy bit: a debugger may attach.
const POLICY_DEBUG: u64 = 1 << 19;
/// Guest policy bit: a migration agent may be associated.
const POLICY_MIGRATE_MA: u64 = 1 << 18;

/// `sig_algo` value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// A TCB version: the security version of each firmware component.
///
/// Its 8-byte encoding depends on the product: Milan and Genoa put the bootloader in byte 0, the
/// TEE in 1, SNP in 6 and microcode in 7; Turin adds an FMC component and puts FMC in byte 0,
/// bootloader in 1, TEE in 2, SNP in 3 and microcode in 7. The other bytes are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Tcb {
    /// Security version of the PSP bootloader.
    pub bootloader: u8,
    /// Security version of the PSP operating system.
    pub tee: u8,
    /// Security version of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
    /// Security version of the FMC firmware: `Some` on Turin, `None` on the products without it.
    pub fmc: Option<u8>,
}

impl Tcb {
    /// A TCB without an FMC component (Milan, Genoa).
    pub const fn new(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        Self {
            bootloader,
            tee,
            snp,
            microcode,
            fmc: None,
        }
    }

    /// A Turin TCB, with its FMC component.
    pub const fn turin(fmc: u8, bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        Self {
            bootloader,
            tee,
            snp,
            microcode,
            fmc: Some(fmc),
        }
    }

    /// Decodes a TCB_VERSION with the layout of `product`.
    pub const fn decode(raw: u64, product: Product) -> Self {
        match product {
            Product::Milan | Product::Genoa => Self::from_milan_genoa(raw),
            Product::Turin => Self::from_turin(raw),
        }
    }

    /// Decodes a TCB_VERSION with the Milan/Genoa layout.
    pub const fn from_milan_genoa(raw: u64) -> Self {
        let b = raw.to_le_bytes();
        Self::new(b[0], b[1], b[6], b[7])
    }

    /// Decodes a TCB_VERSION with the Turin layout.
    pub const fn from_turin(raw: u64) -> Self {
        let b = raw.to_le_bytes();
        Self::turin(b[0], b[1], b[2], b[3], b[7])
    }

    /// Encodes with the Milan/Genoa layout; the reserved bytes are zero and `fmc` is dropped.
    pub const fn to_milan_genoa(self) -> u64 {
        u64::from_le_bytes([
            self.bootloader,
            self.tee,
            0,
            0,
            0,
            0,
            self.snp,
            self.microcode,
        ])
    }

    /// Encodes with the Turin layout; the reserved bytes are zero, and an absent `fmc` is 0.
    pub const fn to_turin(self) -> u64 {
        let fmc = match self.fmc {
            Some(fmc) => fmc,
            None => 0,
        };
        u64::from_le_bytes([
            fmc,
            self.bootloader,
            self.tee,
            self.snp,
            0,
            0,
            0,
            self.microcode,
        ])
    }
}

/// The guest policy bits a reader of a report wants named (SEV-SNP ABI, `GUEST_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    fn bit(self, n: u32) -> bool {
        self.0 & (1 << n) != 0
    }
    /// Bits 0-7: the lowest ABI minor version the guest accepts.
    pub fn abi_minor(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Bits 8-15: the lowest ABI major version the guest accepts.
    pub fn abi_major(self) -> u8 {
        self.0.to_le_bytes()[1]
    }
    /// Bit 16: simultaneous multithreading may be enabled.
    pub fn smt(self) -> bool {
        self.bit(16)
    }
    /// Bit 18: a migration agent may be associated with the guest.
    pub fn migrate_ma(self) -> bool {
        self.0 & POLICY_MIGRATE_MA != 0
    }
    /// Bit 19: a debugger may attach to the guest.
    pub fn debug(self) -> bool {
        self.0 & POLICY_DEBUG != 0
    }
    /// Bit 20: the guest may run on a single socket only.
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }
    /// Bit 21: CXL may be populated with the guest's memory.
    pub fn cxl_allow(self) -> bool {
        self.bit(21)
    }
    /// Bit 22: memory must be encrypted with AES-256-XTS.
    pub fn mem_aes_256_xts(self) -> bool {
        self.bit(22)
    }
    /// Bit 23: running average power limit (RAPL) must be disabled.
    pub fn rapl_dis(self) -> bool {
        self.bit(23)
    }
    /// Bit 24: ciphertext hiding must be enabled.
    pub fn ciphertext_hiding(self) -> bool {
        self.bit(24)
    }
    /// Bit 25: guest page swapping is disabled.
    pub fn page_swap_disable(self) -> bool {
        self.bit(25)
    }
}

/// A parsed, **unverified** attestation report: the fields Concord reads, and the raw bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_LEN]>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("vmpl", &self.vmpl())
            .field("policy", &format_args!("{:#x}", self.policy()))
            .field("measurement", &hex::encode(self.measurement()))
            .field("host_data", &hex::encode(self.host_data()))
            .finish_non_exhaustive()
    }
}

fn u32_at(raw: &[u8; REPORT_LEN], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&raw[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(raw: &[u8; REPORT_LEN], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[off..off + 8]);
    u64::from_le_bytes(b)
}

fn array_at<const N: usize>(raw: &[u8; REPORT_LEN], off: usize) -> &[u8; N] {
    // Invariant: every caller passes a constant offset with `off + N <= REPORT_LEN`,
    // so the slice has exactly N bytes and the conversion cannot fail.
    #[allow(clippy::expect_used)]
    raw[off..off + N]
        .try_into()
        .expect("constant field offset within the report")
}

impl Report {
    /// Parses a report. The input must be exactly [`REPORT_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestationError> {
        let raw: [u8; REPORT_LEN] = bytes.try_into().map_err(|_| {
            AttestationError::malformed(format!(
                "attestation report: expected {REPORT_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self { raw: Box::new(raw) })
    }

    /// The bytes as received.
    pub fn raw(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The part the signature covers: `raw[..0x2A0]`.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// Report format version (2 to 5 are defined).
    pub fn version(&self) -> u32 {
        u32_at(&self.raw, OFF_VERSION)
    }

    /// The guest's security version number.
    pub fn guest_svn(&self) -> u32 {
        u32_at(&self.raw, OFF_GUEST_SVN)
    }

    /// The guest policy the VM was launched with.
    pub fn policy(&self) -> u64 {
        u64_at(&self.raw, OFF_POLICY)
    }

    /// Policy bit 19: a debugger may attach to the guest.
    pub fn debug_allowed(&self) -> bool {
        self.policy() & POLICY_DEBUG != 0
    }

    /// Policy bit 18: a migration agent may be associated with the guest.
    pub fn migrate_ma_allowed(&self) -> bool {
        self.policy() & POLICY_MIGRATE_MA != 0
    }

    /// The VM privilege level that requested the report.
    pub fn vmpl(&self) -> u32 {
        u32_at(&self.raw, OFF_VMPL)
    }

    /// Signature algorithm (1: ECDSA P-384 with SHA-384).
    pub fn sig_algo(&self) -> u32 {
        u32_at(&self.raw, OFF_SIG_ALGO)
    }

    /// The platform's current TCB, raw.
    pub fn current_tcb(&self) -> u64 {
        u64_at(&self.raw, OFF_CURRENT_TCB)
    }

    /// KEY_INFO, raw.
    pub fn key_info(&self) -> u32 {
        u32_at(&self.raw, OFF_KEY_INFO)
    }

    /// KEY_INFO bits 2-4: which key signed the report (0 VCEK, 1 VLEK, 7 none).
    pub fn signing_key(&self) -> u8 {
        // Masked to three bits, so the value fits in a u8.
        ((self.key_info() >> 2) & 0b111) as u8
    }

    /// The 64 bytes the guest chose: Concord's binding.
    pub fn report_data(&self) -> &[u8; 64] {
        array_at(&self.raw, OFF_REPORT_DATA)
    }

    /// The launch measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        array_at(&self.raw, OFF_MEASUREMENT)
    }

    /// HOST_DATA: for Concord, the SHA-256 of the workload's policy document.
    pub fn host_data(&self) -> &[u8; 32] {
        array_at(&self.raw, OFF_HOST_DATA)
    }

    /// The TCB the signing key was derived for, raw.
    pub fn reported_tcb(&self) -> u64 {
        u64_at(&self.raw, OFF_REPORTED_TCB)
    }

    /// CPUID family (extended family plus family) of the processor; version 3 and later, zero
    /// (reserved) in version 2.
    pub fn cpuid_family(&self) -> u8 {
        self.raw[OFF_CPUID_FAMILY]
    }

    /// CPUID model (extended model and model) of the processor; version 3 and later.
    pub fn cpuid_model(&self) -> u8 {
        self.raw[OFF_CPUID_MODEL]
    }

    /// CPUID stepping of the processor; version 3 and later.
    pub fn cpuid_stepping(&self) -> u8 {
        self.raw[OFF_CPUID_STEPPING]
    }

    /// The chip identifier.
    pub fn chip_id(&self) -> &[u8; 64] {
        array_at(&self.raw, OFF_CHIP_ID)
    }

    /// The signature's `r`, little-endian, zero-padded to 72 bytes.
    pub fn signature_r(&self) -> &[u8; SIG_COMPONENT_LEN] {
        array_at(&self.raw, OFF_SIG_R)
    }

    /// The signature's `s`, little-endian, zero-padded to 72 bytes.
    pub fn signature_s(&self) -> &[u8; SIG_COMPONENT_LEN] {
        array_at(&self.raw, OFF_SIG_S)
    }

    /// The reserved rest of the signature field (after `r` and `s`, to the end): unsigned, so
    /// it must be zero for the report to be the one the hardware produced.
    pub fn signature_reserved(&self) -> &[u8] {
        &self.raw[OFF_SIG_RESERVED..]
    }
}

/// Writes the report layout; used by the simulated issuer. The result is unsigned (zero signature).
///
/// Defaults: version 3, policy 0x30000 (SMT allowed, reserved bit 17 set, debug and migration
/// agent off), VMPL 0, `sig_algo` 1, `key_info` 0 (VCEK); everything else zero.
#[derive(Clone)]
pub struct ReportBuilder {
    raw: Box<[u8; REPORT_LEN]>,
}

impl std::fmt::Debug for ReportBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportBuilder").finish_non_exhaustive()
    }
}

impl Default for ReportBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportBuilder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self {
            raw: Box::new([0u8; REPORT_LEN]),
        }
        .version(3)
        .policy(0x30000)
        .vmpl(0)
        .sig_algo(SIG_ALGO_ECDSA_P384_SHA384)
        .key_info(0)
    }

    fn put(mut self, off: usize, bytes: &[u8]) -> Self {
        self.raw[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Sets the format version.
    pub fn version(self, v: u32) -> Self {
        self.put(OFF_VERSION, &v.to_le_bytes())
    }
    /// Sets the guest SVN.
    pub fn guest_svn(self, v: u32) -> Self {
        self.put(OFF_GUEST_SVN, &v.to_le_bytes())
    }
    /// Sets the guest policy.
    pub fn policy(self, v: u64) -> Self {
        self.put(OFF_POLICY, &v.to_le_bytes())
    }
    /// Sets the VMPL.
    pub fn vmpl(self, v: u32) -> Self {
        self.put(OFF_VMPL, &v.to_le_bytes())
    }
    /// Sets the signature algorithm.
    pub fn sig_algo(self, v: u32) -> Self {
        self.put(OFF_SIG_ALGO, &v.to_le_bytes())
    }
    /// Sets KEY_INFO.
    pub fn key_info(self, v: u32) -> Self {
        self.put(OFF_KEY_INFO, &v.to_le_bytes())
    }
    /// Sets the current TCB (Milan/Genoa layout).
    pub fn current_tcb(self, tcb: Tcb) -> Self {
        self.put(OFF_CURRENT_TCB, &tcb.to_milan_genoa().to_le_bytes())
    }
    /// Sets the reported TCB (Milan/Genoa layout).
    pub fn reported_tcb(self, tcb: Tcb) -> Self {
        self.put(OFF_REPORTED_TCB, &tcb.to_milan_genoa().to_le_bytes())
    }
    /// Sets REPORT_DATA.
    pub fn report_data(self, v: &[u8; 64]) -> Self {
        self.put(OFF_REPORT_DATA, v)
    }
    /// Sets the measurement.
    pub fn measurement(self, v: &[u8; 48]) -> Self {
        self.put(OFF_MEASUREMENT, v)
    }
    /// Sets HOST_DATA.
    pub fn host_data(self, v: &[u8; 32]) -> Self {
        self.put(OFF_HOST_DATA, v)
    }
    /// Sets the chip ID.
    pub fn chip_id(self, v: &[u8; 64]) -> Self {
        self.put(OFF_CHIP_ID, v)
    }
    /// Sets the reported TCB, already encoded (for layouts other than Milan/Genoa's).
    pub fn reported_tcb_raw(self, raw: u64) -> Self {
        self.put(OFF_REPORTED_TCB, &raw.to_le_bytes())
    }
    /// Sets the CPUID family, model and stepping (report version 3 and later).
    pub fn cpuid(self, family: u8, model: u8, stepping: u8) -> Self {
        self.put(OFF_CPUID_FAMILY, &[family, model, stepping])
    }

    /// The report bytes, with a zero signature.
    pub fn build_unsigned(self) -> [u8; REPORT_LEN] {
        *self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_and_parser_agree_on_every_field() {
        let raw = ReportBuilder::new()
            .guest_svn(7)
            .reported_tcb(Tcb::new(3, 0, 8, 115))
            .current_tcb(Tcb::new(4, 1, 9, 200))
            .report_data(&[1; 64])
            .measurement(&[2; 48])
            .host_data(&[3; 32])
            .chip_id(&[4; 64])
            .build_unsigned();
        let r = Report::parse(&raw).unwrap();
        assert_eq!(r.version(), 3);
        assert_eq!(r.guest_svn(), 7);
        assert_eq!(r.policy(), 0x30000);
        assert!(!r.debug_allowed());
        assert!(!r.migrate_ma_allowed());
        assert_eq!(r.vmpl(), 0);
        assert_eq!(r.sig_algo(), 1);
        assert_eq!(r.signing_key(), 0);
        assert_eq!(
            Tcb::from_milan_genoa(r.reported_tcb()),
            Tcb::new(3, 0, 8, 115)
        );
        assert_eq!(
            Tcb::from_milan_genoa(r.current_tcb()),
            Tcb::new(4, 1, 9, 200)
        );
        assert_eq!(r.report_data(), &[1; 64]);
        assert_eq!(r.measurement(), &[2; 48]);
        assert_eq!(r.host_data(), &[3; 32]);
        assert_eq!(r.chip_id(), &[4; 64]);
        assert_eq!(r.signed_bytes(), &raw[..SIGNED_LEN]);
        assert_eq!(r.signature_r(), &[0; 72]);
    }

    #[test]
    fn offsets_are_the_documented_ones() {
        // Written by hand at the offsets of the AMD layout, independent of the builder.
        let mut raw = [0u8; REPORT_LEN];
        raw[0x00] = 2;
        raw[0x08..0x10].copy_from_slice(&0xb0000u64.to_le_bytes());
        raw[0x30] = 1;
        raw[0x48] = 0b100; // VLEK
        raw[0x50] = 0xAA;
        raw[0x90] = 0xBB;
        raw[0xC0] = 0xCC;
        raw[0x180..0x188].copy_from_slice(&[2, 0, 0, 0, 0, 0, 5, 68]);
        raw[0x1A0] = 0xDD;
        raw[0x2A0] = 0xEE;
        raw[0x2E8] = 0xFF;
        let r = Report::parse(&raw).unwrap();
        assert_eq!(r.version(), 2);
        assert!(r.debug_allowed());
        assert!(!r.migrate_ma_allowed());
        assert_eq!(r.vmpl(), 1);
        assert_eq!(r.signing_key(), 1);
        assert_eq!(r.report_data()[0], 0xAA);
        assert_eq!(r.measurement()[0], 0xBB);
        assert_eq!(r.host_data()[0], 0xCC);
        assert_eq!(
            Tcb::from_milan_genoa(r.reported_tcb()),
            Tcb::new(2, 0, 5, 68)
        );
        assert_eq!(r.chip_id()[0], 0xDD);
        assert_eq!(r.signature_r()[0], 0xEE);
        assert_eq!(r.signature_s()[0], 0xFF);
    }

    #[test]
    fn turin_and_milan_tcb_layouts_differ_and_round_trip() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 5, 6]);
        assert_eq!(Tcb::from_milan_genoa(raw), Tcb::new(1, 2, 5, 6));
        assert_eq!(Tcb::from_turin(raw), Tcb::turin(1, 2, 3, 4, 6));
        assert_eq!(Tcb::decode(raw, Product::Genoa), Tcb::new(1, 2, 5, 6));
        assert_eq!(Tcb::decode(raw, Product::Turin), Tcb::turin(1, 2, 3, 4, 6));
        let turin = Tcb::turin(9, 8, 7, 6, 5);
        assert_eq!(Tcb::from_turin(turin.to_turin()), turin);
        let milan = Tcb::new(8, 7, 6, 5);
        assert_eq!(Tcb::from_milan_genoa(milan.to_milan_genoa()), milan);
    }

    #[test]
    fn policy_bits_are_named_at_their_documented_positions() {
        let p = GuestPolicy(0xb0000 | 0x1f | (1 << 20) | (1 << 25) | (2 << 8));
        assert!(p.debug() && p.smt() && p.single_socket() && p.page_swap_disable());
        assert!(!p.migrate_ma() && !p.cxl_allow() && !p.mem_aes_256_xts());
        assert!(!p.rapl_dis() && !p.ciphertext_hiding());
        assert_eq!((p.abi_major(), p.abi_minor()), (2, 0x1f));
        assert!(GuestPolicy(1 << 18).migrate_ma());
    }

    #[test]
    fn cpuid_fields_are_read_from_0x188() {
        let raw = ReportBuilder::new().cpuid(0x19, 0xa0, 2).build_unsigned();
        assert_eq!(&raw[0x188..0x18B], &[0x19, 0xa0, 2]);
        let r = Report::parse(&raw).unwrap();
        assert_eq!(
            (r.cpuid_family(), r.cpuid_model(), r.cpuid_stepping()),
            (0x19, 0xa0, 2)
        );
    }

    #[test]
    fn wrong_length_is_malformed() {
        for len in [0, REPORT_LEN - 1, REPORT_LEN + 1] {
            let err = Report::parse(&vec![0u8; len]).unwrap_err();
            assert!(
                matches!(&err, AttestationError::Malformed { what } if what.contains("1184")),
                "{err}"
            );
        }
    }
}

//! Vietnam's administrative units as they are since 2025-07-01: two levels, 34 provinces and about
//! 3,300 communes and wards, no districts.
//!
//! The catalogue is data, built into the binary: `data/admin-units.tsv` (generated from the national
//! statistics office's codes; its header names the source and how to update it) and
//! `data/legacy-provinces.tsv` (the 63 pre-2025 province codes and the province that carries each one's
//! territory now, written by hand from the merger resolution).
//!
//! The connector checks every province and ward code it is given against this catalogue before it
//! accepts a shipment, and the postal simulator refuses orders whose codes are not in it, as a strict
//! VNPost would. A pre-2025 province code is mapped to the current one; a pre-2025 ward code is accepted
//! only where the current catalogue still has it (most merged wards took the code of one of their
//! predecessors) — there is no published table from the other old ward codes to the new ones, so those
//! are refused and the caller must send the current code.

use std::collections::HashMap;
use std::sync::OnceLock;

const UNITS: &str = include_str!("../data/admin-units.tsv");
const LEGACY: &str = include_str!("../data/legacy-provinces.tsv");

/// Where the catalogue comes from, for `--help`, status pages and docs.
pub const SOURCE: &str =
    "national statistics office codes in force since 2025-07-01 (vietnam-provinces 2025.10.1)";

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("not an administrative unit code (1 to 3 digits for a province, 1 to 5 for a ward)")]
    Malformed,
    #[error("no such province, before or after 2025-07-01")]
    UnknownProvince,
    #[error(
        "no such commune or ward in the current catalogue (a pre-2025 ward code that was merged away cannot be mapped: send the current code)"
    )]
    UnknownWard,
    #[error("this commune or ward belongs to another province")]
    WardOutsideProvince,
}

impl AdminError {
    /// A stable machine code for problem details.
    pub fn code(self) -> &'static str {
        match self {
            AdminError::Malformed => "invalid_admin_code",
            AdminError::UnknownProvince => "unknown_province",
            AdminError::UnknownWard => "unknown_ward",
            AdminError::WardOutsideProvince => "ward_outside_province",
        }
    }
}

/// A province code after checking: the current two-digit code, and the pre-2025 code it was mapped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Province {
    pub code: String,
    pub mapped_from: Option<String>,
}

/// The catalogue (see the module doc).
#[derive(Debug)]
pub struct Catalogue {
    provinces: HashMap<u16, String>,
    /// Ward code → its province.
    wards: HashMap<u32, u16>,
    /// Pre-2025 province → current province.
    legacy: HashMap<u16, u16>,
}

/// A district code as given: `Ok(None)` when absent or blank (districts are optional since 2025),
/// `Ok(Some(code))` for up to 5 digits, else `Err` with the trimmed value.
pub fn district(raw: Option<&str>) -> Result<Option<&str>, &str> {
    match raw.map(str::trim).filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) if d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(d)),
        Some(d) => Err(d),
    }
}

/// The catalogue built into the binary.
pub fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| Catalogue::parse(UNITS, LEGACY))
}

fn digits(code: &str, max: usize) -> Option<u32> {
    let code = code.trim();
    if code.is_empty() || code.len() > max || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

impl Catalogue {
    /// Reads the two tables; lines that are comments or malformed are skipped (the tests count the rows).
    pub fn parse(units: &str, legacy: &str) -> Catalogue {
        let mut provinces = HashMap::new();
        let mut wards = HashMap::new();
        for line in units.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            match cols.as_slice() {
                ["P", code, name] => {
                    if let Ok(c) = code.parse() {
                        provinces.insert(c, (*name).to_owned());
                    }
                }
                ["W", province, ward, _name] => {
                    if let (Ok(p), Ok(w)) = (province.parse(), ward.parse()) {
                        wards.insert(w, p);
                    }
                }
                _ => {}
            }
        }
        let legacy = legacy
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut cols = l.split('\t');
                Some((cols.next()?.parse().ok()?, cols.next()?.parse().ok()?))
            })
            .collect();
        Catalogue {
            provinces,
            wards,
            legacy,
        }
    }

    pub fn province_count(&self) -> usize {
        self.provinces.len()
    }

    pub fn ward_count(&self) -> usize {
        self.wards.len()
    }

    /// The current province's name.
    pub fn province_name(&self, code: &str) -> Option<&str> {
        let n = u16::try_from(digits(code, 3)?).ok()?;
        self.provinces.get(&n).map(String::as_str)
    }

    /// Checks a province code (current or pre-2025) and answers the current two-digit code.
    pub fn province(&self, code: &str) -> Result<Province, AdminError> {
        let n = digits(code, 3)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(AdminError::Malformed)?;
        if self.provinces.contains_key(&n) {
            return Ok(Province {
                code: format!("{n:02}"),
                mapped_from: None,
            });
        }
        match self.legacy.get(&n) {
            Some(current) => Ok(Province {
                code: format!("{current:02}"),
                mapped_from: Some(format!("{n:02}")),
            }),
            None => Err(AdminError::UnknownProvince),
        }
    }

    /// Checks a ward code against a current province code (as [`Catalogue::province`] answers it) and
    /// answers the five-digit code.
    pub fn ward(&self, province: &str, ward: &str) -> Result<String, AdminError> {
        let w = digits(ward, 5).ok_or(AdminError::Malformed)?;
        let p = digits(province, 3).ok_or(AdminError::Malformed)?;
        match self.wards.get(&w) {
            None => Err(AdminError::UnknownWard),
            Some(owner) if u32::from(*owner) != p => Err(AdminError::WardOutsideProvince),
            Some(_) => Ok(format!("{w:05}")),
        }
    }

    /// True for a current province code written as the catalogue writes it (two digits). What a strict
    /// upstream accepts: no pre-2025 code, no other spelling.
    pub fn is_current_province(&self, code: &str) -> bool {
        code.len() == 2
            && digits(code, 2)
                .and_then(|n| u16::try_from(n).ok())
                .is_some_and(|n| self.provinces.contains_key(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_the_34_provinces_and_their_wards() {
        let c = catalogue();
        assert_eq!(c.province_count(), 34);
        assert!(
            (3200..3400).contains(&c.ward_count()),
            "{} wards",
            c.ward_count()
        );
        assert_eq!(c.province_name("48"), Some("Thành phố Đà Nẵng"));
        assert_eq!(c.legacy.len(), 63, "every pre-2025 province is mapped");
        for current in c.legacy.values() {
            assert!(c.provinces.contains_key(current), "{current} is current");
        }
    }

    #[test]
    fn current_province_codes_are_kept_and_normalised() {
        let c = catalogue();
        assert_eq!(c.province("48").map(|p| p.code), Ok("48".into()));
        assert_eq!(c.province("048").map(|p| p.code), Ok("48".into()));
        assert_eq!(c.province("1").map(|p| p.code), Ok("01".into()));
    }

    #[test]
    fn pre_2025_province_codes_map_to_the_province_that_absorbed_them() {
        let c = catalogue();
        let quang_nam = c.province("49").expect("Quảng Nam");
        assert_eq!(quang_nam.code, "48");
        assert_eq!(quang_nam.mapped_from.as_deref(), Some("49"));
        assert_eq!(c.province("74").map(|p| p.code), Ok("79".into()));
        assert_eq!(c.province("02").map(|p| p.code), Ok("08".into()));
    }

    #[test]
    fn unknown_and_malformed_province_codes_are_refused() {
        let c = catalogue();
        assert_eq!(c.province("03"), Err(AdminError::UnknownProvince));
        assert_eq!(c.province("HN"), Err(AdminError::Malformed));
        assert_eq!(c.province(""), Err(AdminError::Malformed));
        assert_eq!(c.province("0048"), Err(AdminError::Malformed));
    }

    #[test]
    fn wards_must_exist_now_and_belong_to_the_province() {
        let c = catalogue();
        // Phường Liên Chiểu, Đà Nẵng.
        assert_eq!(c.ward("48", "20197"), Ok("20197".into()));
        // Phường Hoàn Kiếm is in Hà Nội.
        assert_eq!(c.ward("48", "00070"), Err(AdminError::WardOutsideProvince));
        assert_eq!(c.ward("01", "70"), Ok("00070".into()));
        // Hòa Hiệp Bắc (20194) was merged away on 2025-07-01.
        assert_eq!(c.ward("48", "20194"), Err(AdminError::UnknownWard));
        assert_eq!(c.ward("48", "2019x"), Err(AdminError::Malformed));
    }

    #[test]
    fn a_strict_upstream_takes_only_current_two_digit_province_codes() {
        let c = catalogue();
        assert!(c.is_current_province("48"));
        assert!(!c.is_current_province("49"), "pre-2025 Quảng Nam");
        assert!(!c.is_current_province("048"));
        assert!(!c.is_current_province(""));
    }
}
